"""A Parquet table the user names (a manifest, a styles table): one file, or every `.parquet` part
under a folder or prefix, read from a path or any fsspec URI within the table limit, or a
ManifestError saying why not (missing, a device or a pipe, too large, not Parquet, out of reach).
"""

from __future__ import annotations

import os
import re

import pyarrow as pa

from pipeline.spec.checks import ManifestError, Problem, refusal
from pipeline.storage import uris

_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


def read_parquet(uri: str, what: str) -> pa.Table:
    """A whole Parquet table (a file, or a folder or prefix of parts) from a path or any fsspec
    URI, or ManifestError saying why not. The URI resolves and its parts are checked as every
    input is (`pipeline.storage.uris`), so an address that names no place, a device, a pipe or a store
    out of reach is a named problem."""
    from pipeline.storage import tables

    try:
        where = uris.resolve(uri, os.getcwd())
    except ValueError as e:
        raise ManifestError([Problem(uri, f"{what} cannot be read: {e}")]) from None
    try:
        read = []
        for part in _parts(where):
            if uris.split(part)[0] == uris.LOCAL:
                read.append(tables.read(part))  # by path: Arrow's own file (see pipeline/storage/tables.py)
            else:
                # Through fsspec, like every other input: one client, one configuration (pyarrow's
                # own S3 client does not read every standard AWS variable).
                with uris.open_input(part, uris.TABLE) as f:
                    read.append(tables.read(f))
        table = pa.concat_tables(read, promote_options="default") if len(read) > 1 else read[0]
    except Exception as e:  # noqa: BLE001 — whatever stops the read (credentials, network, a driver) is named
        raise ManifestError([Problem(uri, refusal(e, uri, what, "Parquet file"))]) from None
    # pandas writes its index as a column; it is not the user's data.
    names = table.column_names
    return table.select([i for i, c in enumerate(names) if not _PANDAS_INDEX.fullmatch(c)])


def _parts(where: str) -> list[str]:
    """The Parquet files a table URI names: itself, or the `.parquet` files under a folder or
    prefix; each a regular file or object, all together within the table limit."""
    scheme, path = uris.split(where)
    if scheme == uris.LOCAL:
        if os.path.isdir(path):
            parts = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                           if n.endswith(".parquet"))
        else:
            parts = [path]
    else:
        fs, key = uris.filesystem(where)
        found = sorted(p for p in fs.find(key) if p.endswith(".parquet")) if fs.isdir(key) else [key]
        parts = [f"{scheme}://{p}" for p in found]
    if not parts:
        raise FileNotFoundError(where)
    uris.within_limit(where, sum(uris.checked_size(p, uris.TABLE) for p in parts), uris.TABLE)  # all together
    return parts
