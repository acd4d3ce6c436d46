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

`read_input` reads a table the user hands us (a manifest, a styles table) as every input is
read (`pipeline.storage.uris`): bounded, regular files or objects only, listed once.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa
import pyarrow.parquet as pq


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


def read_input(where: str) -> pa.Table:
    """A whole Parquet input from a resolved URI: a file, or a folder or prefix of `.parquet`
    parts (`uris.parts`), concatenated. A local part is read by path (see above); a remote one
    through fsspec, like every other input: one client, one configuration (pyarrow's own S3
    client does not read every standard AWS variable)."""
    from pipeline.storage import paths, uris

    read_parts = []
    for uri, listing in uris.parts(where, ".parquet", uris.TABLE):
        if paths.split(uri)[0] == paths.LOCAL:
            read_parts.append(read(uri))
        else:
            with uris.open_input(uri, uris.TABLE, listing) as f:
                read_parts.append(read(f))
    return pa.concat_tables(read_parts, promote_options="default") if len(read_parts) > 1 else read_parts[0]
