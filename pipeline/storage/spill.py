"""A spill file on the driver's disk: tables written under keys, read back by key, so a phase
holds one key's rows at a time (a range of item ids, a range's part of a plan chunk).

One Arrow IPC file per spill, its batches compressed (or not: `compressed`), appended in any
key order. A key is a whole number; which batch holds which key stays in memory as one 64-bit
number a batch (sorted once, at the first read): a join of 100M candidates writes about four
million batches (4,096 ranges × 1,000 plan chunks), whose index as a dict of lists would take a
gigabyte, and takes about 80 MB this way. Read through a plain file, not a memory map: a mapped
file's pages would count against the driver as they are read.
"""

from __future__ import annotations

from array import array
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa

OPTIONS = pa.ipc.IpcWriteOptions(compression="lz4")
# Uncompressed: a batch's buffers written as they are. LZ4 costs about 0.5 ms a batch of 56
# columns to write and 0.35 ms to read whatever its rows (0.19 and 0.04 ms without), and takes
# about 40% off the file.
PLAIN = pa.ipc.IpcWriteOptions(compression=None)


class Spill:
    """Tables of one schema under keys, on disk. Write everything, then read."""

    def __init__(self, path: Path, schema: pa.Schema, compressed: bool = True):
        self.path, self.schema = path, schema
        path.parent.mkdir(parents=True, exist_ok=True)
        self._sink = pa.OSFile(str(path), "wb")
        self._writer = pa.ipc.new_file(self._sink, schema, options=OPTIONS if compressed else PLAIN)
        self._keys = array("q")  # each batch's key, in the order written
        self._sorted: np.ndarray | None = None  # the keys in order, and the batches holding them
        self._batches: np.ndarray | None = None
        self.rows = 0
        self._reader = self._source = None

    def add(self, key: int, table: pa.Table) -> None:
        """Append `table`'s rows under `key` (nothing when it has none)."""
        if not table.num_rows:
            return
        if table.schema != self.schema:  # a cast column by column costs more than writing a small table
            table = table.cast(self.schema)
        for batch in table.combine_chunks().to_batches():
            self._writer.write_batch(batch)
            self._keys.append(key)
        self.rows += table.num_rows

    def keys_with_rows(self) -> list[int]:
        keys = self._sorted if self._sorted is not None else np.frombuffer(self._keys, np.int64)
        return np.unique(keys).tolist()

    def read(self, key: int) -> pa.Table:
        """Every row written under `key`, in the order written (none: an empty table)."""
        if self._writer is not None:
            self._writer.close()
            self._sink.close()
            self._writer = None
            keys = np.frombuffer(self._keys, np.int64)
            self._batches = np.argsort(keys, kind="stable").astype(np.int32 if len(keys) < 2**31 else np.int64)
            self._sorted = keys[self._batches]
            self._keys = array("q")
        first, last = np.searchsorted(self._sorted, [key, key + 1])
        if first == last:
            return self.schema.empty_table()
        if self._reader is None:
            self._source = pa.OSFile(str(self.path), "rb")
            self._reader = pa.ipc.open_file(self._source)
        return pa.Table.from_batches([self._reader.get_batch(int(i)) for i in self._batches[first:last]],
                                     self.schema)

    def close(self) -> None:
        """Close and remove the file."""
        for f in (self._writer, self._sink, self._source):
            if f is not None:
                f.close()
        self._writer = self._reader = self._source = None
        self.path.unlink(missing_ok=True)


def split(table: pa.Table, keys: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """`table`'s rows grouped by their integer `keys` (a range of item ids, a plan chunk), in
    key order, each group in its rows' order: one stable sort (none when already in order) and a
    slice a group. A filter a key would scan the table once for each of up to 4,096 keys: at
    256 ranges, reading a 2M-candidate output's shards took minutes that way."""
    if not len(keys):
        return
    if (np.diff(keys) < 0).any():
        order = np.argsort(keys, kind="stable")
        table, keys = table.take(pa.array(order)), keys[order]
    cuts = np.flatnonzero(np.diff(keys)) + 1
    for start, stop in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(keys)]]), strict=True):
        yield int(keys[start]), table.slice(int(start), int(stop - start))
