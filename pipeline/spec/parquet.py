"""A Parquet table the user names (a manifest, a styles table): one file, or every `.parquet` part
under a folder or prefix, read from a path or any fsspec URI within the table limit, a chunk at a
time, or a ManifestError saying why not (missing, a device or a pipe, too large, not Parquet, out
of reach, parts whose columns disagree, a read that fails half-way).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from pipeline.errors import ManifestError, Problem, refusal
from pipeline.storage import paths
from pipeline.storage.tables import InputTable

_PANDAS_INDEX = re.compile(r"__index_level_\d+__")


@dataclass(frozen=True)
class UserTable:
    """A user's table, opened (its parts listed and their footers read): its columns and row
    count known, its rows read a chunk at a time. pandas' index columns are not the user's data
    and are left out."""

    uri: str
    what: str  # "manifest", "styles table": how problems name it
    source: InputTable

    @property
    def schema(self) -> pa.Schema:
        return self.source.schema

    @property
    def rows(self) -> int:
        return self.source.rows

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """`InputTable.chunks`, a failed read (the network, a damaged part) named as a problem of this table."""
        read = self.source.chunks(rows, columns)
        while True:
            try:
                chunk = next(read)
            except StopIteration:
                return
            except Exception as e:  # noqa: BLE001 — whatever stops the read is named
                raise ManifestError([Problem(self.uri, refusal(e, self.uri, self.what, "Parquet file"))]) from None
            yield chunk

    def read(self) -> pa.Table:
        """The whole table (a styles table: a few rows)."""
        return pa.concat_tables([self.schema.empty_table(), *self.chunks(65_536)])


def open_parquet(uri: str, what: str) -> UserTable:
    """The table at a path or any fsspec URI, opened, or ManifestError saying why not. The URI
    resolves (`pipeline.storage.paths`) and its parts are listed once and checked as every input
    is (`pipeline.storage.tables.InputTable`), so an address that names no place, a device, a
    pipe or a store out of reach is a named problem."""
    try:
        where = paths.resolve(uri, os.getcwd())
    except ValueError as e:
        raise ManifestError([Problem(uri, f"{what} cannot be read: {e}")]) from None
    try:
        source = InputTable.open(where)
    except Exception as e:  # noqa: BLE001 — whatever stops the read (credentials, network, a driver) is named
        raise ManifestError([Problem(uri, refusal(e, uri, what, "Parquet file"))]) from None
    return UserTable(uri, what, source.without({n for n in source.schema.names if _PANDAS_INDEX.fullmatch(n)}))


def read_parquet(uri: str, what: str) -> pa.Table:
    """A whole table (a styles table), or ManifestError saying why not."""
    return open_parquet(uri, what).read()
