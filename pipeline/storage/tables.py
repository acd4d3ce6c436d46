"""Parquet in and out of memory, one way for the whole pipeline.

Arrow's reader threads must not read from a Python object (a file object, in-memory bytes, an
fsspec file): with polars loaded too, the interpreter then aborts now and then as it exits
("terminate called without an active exception", apache/arrow#34314), and a command that did
all its work exits 134. Measured here: 8 to 10 of 40 processes reading shards from bytes or
a Python file with threads aborted; 0 of 40 reading the same by path, or single-threaded. So
a local file is read by path (Arrow's own file, threaded) and anything else single-threaded.

`batches` streams a table too large to hold (a results table of millions of rows): record
batches of the columns asked for, one at a time; `valid_count` counts a column's values from the
footer's statistics alone.

`InputTable` reads a table the user hands us (a manifest, a styles table) as every input is
read (`pipeline.storage.uris`): bounded, regular files or objects only, listed once; a chunk at
a time.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import Refused


def to_bytes(table: pa.Table, row_group_size: int | None = None) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer, row_group_size=row_group_size)
    return buffer.getvalue()


def read(source: str | Path | bytes | BinaryIO, columns: list[str] | None = None) -> pa.Table:
    """A Parquet table from a local path, its bytes, or an open file (ranged reads on object
    storage): the `columns` it has (all when None)."""
    native = isinstance(source, str | Path)
    if isinstance(source, bytes):
        source = pa.BufferReader(source)
    with pq.ParquetFile(str(source) if native else source) as f:
        names = f.schema_arrow.names
        wanted = [c for c in columns if c in names] if columns is not None else names
        return f.read(columns=wanted, use_threads=native)


BATCH_ROWS = 65_536  # rows a streamed batch holds at most
# A streamed read pre-buffers nothing: with pre-buffering (pyarrow's default) `iter_batches`
# keeps every row group's column chunks it has read until the file closes, so reading the
# item ids and paths of a 20M-candidate results table held 680 MB by its end.
STREAMED = {"pre_buffer": False}


def batches(source: str | Path | BinaryIO, columns: list[str] | None,
            rows: int = BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The `columns` the table has (all when None), at most `rows` at a time, from a local path
    or an open file.

    Memory is flat in the file's length, for two reasons measured on results tables of 100k to
    1.5M rows. A row group at a time (a batch never spans two): the reader pre-buffers the column
    chunks it is asked for and keeps them until it is next asked, so one call over every row group
    held each chunk read so far (27 MB more Arrow memory at 1.5M rows than at 100k). And after
    each row group the memory pool hands back the pages it freed: mimalloc, Arrow's default pool,
    otherwise keeps them, and a reader's resident size crept up with every batch read (+50 MB
    over 1.5M rows, with 15 MB of Arrow memory in use at any time)."""
    native = isinstance(source, str | Path)
    with pq.ParquetFile(str(source) if native else source, **STREAMED) as f:
        names = f.schema_arrow.names
        wanted = [c for c in columns if c in names] if columns is not None else names
        for group in range(f.num_row_groups):
            yield from f.iter_batches(rows, row_groups=[group], columns=wanted, use_threads=native)
            pa.default_memory_pool().release_unused()


def valid_count(source: str | Path | BinaryIO, columns: list[str]) -> int | None:
    """How many values (not nulls) the `columns` the table has hold in all, from the footer's
    statistics; None when a row group has none (a writer that left them out)."""
    native = isinstance(source, str | Path)
    with pq.ParquetFile(str(source) if native else source) as f:
        meta = f.metadata
        leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]  # nested columns have several
        total = 0
        for c in (c for c in columns if c in leaves):
            index = leaves.index(c)
            for g in range(meta.num_row_groups):
                stats = meta.row_group(g).column(index).statistics
                if stats is None or not stats.has_null_count:
                    return None
                total += meta.row_group(g).num_rows - stats.null_count
        return total


@dataclass(frozen=True)
class InputTable:
    """A Parquet table the user hands us (a manifest, a styles table), opened: its parts (a file,
    or the `.parquet` files under a folder or prefix: `uris.parts`, listed once, checked and
    bounded as every input is) and their footers read, their schemas unified (a part that lacks a
    column has it null). Read a chunk at a time, so a catalogue of millions of rows is never held
    whole; a local part by path, a remote one through fsspec like every other input (one client,
    one configuration: pyarrow's own S3 client does not read every standard AWS variable)."""

    parts: tuple[tuple[str, dict], ...]
    schema: pa.Schema
    rows: int
    stamps: tuple[tuple | None, ...]  # each part's version when opened (`_stamp`)

    @classmethod
    def open(cls, where: str) -> InputTable:
        from pipeline.storage import uris

        parts, schemas, rows = tuple(uris.parts(where, ".parquet", uris.TABLE)), [], 0
        stamps = tuple(_stamp(uri) for uri, _ in parts)
        for uri, listing in parts:
            with _opened(uri, listing) as source, pq.ParquetFile(source) as f:
                schemas.append(f.schema_arrow)
                rows += f.metadata.num_rows
        # one part's schema as it is: a name used twice is the caller's to name, not unification's
        schema = schemas[0] if len(schemas) == 1 else pa.unify_schemas(schemas, promote_options="default")
        return cls(parts, schema, rows, stamps)

    def without(self, names: set[str]) -> InputTable:
        """The table without these columns."""
        return dataclasses.replace(self, schema=pa.schema([f for f in self.schema if f.name not in names]))

    def chunks(self, rows: int, columns: list[str] | None = None) -> Iterator[pa.Table]:
        """The table's rows in order, `rows` at a time (the last fewer), each with every column of
        the schema (or of `columns`) in its order and type; at most a row group and a chunk held."""
        target = pa.schema([self.schema.field(n) for n in columns]) if columns is not None else self.schema
        held: list[pa.Table] = []
        count = 0
        for (uri, listing), stamp in zip(self.parts, self.stamps, strict=True):
            if _stamp(uri) != stamp:  # read again (validated, then planned): the same table, or no rows
                raise Refused(f"{uri} changed while the run read it; run again")
            with _opened(uri, listing) as source:
                named = len(set(target.names)) == len(target.names)  # else column_problems names the name used twice
                for batch in batches(source, target.names if named else None, rows):
                    part = pa.Table.from_batches([batch])
                    held.append(part if part.schema.equals(target) else _conformed(part, target))
                    count += batch.num_rows
                    while count >= rows:
                        whole = pa.concat_tables(held)
                        yield whole.slice(0, rows)
                        held, count = [whole.slice(rows)], count - rows
        if count:
            yield pa.concat_tables(held)


def _stamp(uri: str) -> tuple | None:
    """What tells one version of a local part from another: its size and modification time.
    (An object is read as listed when the table was opened: by ranged reads of that size; a
    store that keeps versions would pin one here.)"""
    from pipeline.storage import paths

    scheme, path = paths.split(uri)
    if scheme != paths.LOCAL:
        return None
    st = os.stat(path)
    return st.st_size, st.st_mtime_ns


def _opened(uri: str, listing: dict):
    """A part to read: a local one by path (Arrow's own file, threaded), a remote one open."""
    from pipeline.storage import paths, uris

    if paths.split(uri)[0] == paths.LOCAL:
        return contextlib.nullcontext(uri)
    return uris.open_input(uri, uris.TABLE, listing)


def _conformed(table: pa.Table, target: pa.Schema) -> pa.Table:
    """A part's rows in the unified schema: its columns in order and type, a missing one null."""
    def column(field: pa.Field) -> pa.ChunkedArray | pa.Array:
        if field.name not in table.column_names:
            return pa.nulls(table.num_rows, field.type)
        found = table.column(field.name)
        return found if found.type == field.type else found.cast(field.type)

    columns = [column(f) for f in target]
    return pa.Table.from_arrays(columns, schema=target)
