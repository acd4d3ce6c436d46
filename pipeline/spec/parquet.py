"""A Parquet table the user names (a manifest, a styles table): one file, or every `.parquet` part
under a folder or prefix, read from a path or any fsspec URI within the table limit, or a
ManifestError saying why not (missing, a device or a pipe, too large, not Parquet, out of reach).
"""

from __future__ import annotations

import os
import re

import pyarrow as pa

from pipeline.errors import ManifestError, Problem, refusal
from pipeline.storage import paths

_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def read_parquet(uri: str, what: str) -> pa.Table:
    """A whole Parquet table (a file, or a folder or prefix of parts) from a path or any fsspec
    URI, or ManifestError saying why not. The URI resolves (`pipeline.storage.paths`) and its
    parts are listed once and checked as every input is (`pipeline.storage.tables.read_input`),
    so an address that names no place, a device, a pipe or a store out of reach is a named problem."""
    from pipeline.storage import tables

    try:
        where = paths.resolve(uri, os.getcwd())
    except ValueError as e:
        raise ManifestError([Problem(uri, f"{what} cannot be read: {e}")]) from None
    try:
        table = tables.read_input(where)
    except Exception as e:  # noqa: BLE001 — whatever stops the read (credentials, network, a driver) is named
        raise ManifestError([Problem(uri, refusal(e, uri, what, "Parquet file"))]) from None
    # pandas writes its index as a column; it is not the user's data.
    names = table.column_names
    return table.select([i for i, c in enumerate(names) if not _PANDAS_INDEX.fullmatch(c)])

