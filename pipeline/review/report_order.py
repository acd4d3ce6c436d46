"""The contact sheet's order over a results table of any size, in the memory of one part.

The page shows candidates by style (no style last), then manifest row, id and candidate, equal
keys in the table's order. `results.parquet` is in plan order, formats children after every main
row, so neither a style's rows nor a row's candidates are together in it, and sorting it whole
held every shown column at once (about 300 MB at 1M candidates, 12 GB at 20M). Instead:

1. count (the `style` and `row` columns only): each style's candidates and span of rows;
2. cut the display order into parts of about `PART` candidates: a large style's rows into equal
   ranges, small styles next to each other into one part (`Parts`);
3. spill (`run.spill`): each batch of the table, split by part, goes to one temp file;
4. read back a part at a time, in order, sorted by the whole key.

Memory is that of one batch or one part (more only where a style's rows are very uneven), never
the table's; the temp file holds the rest, compressed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.run.summary import NO_STYLE
from pipeline.storage import layout, records, tables
from pipeline.storage.spill import Spill, split
from pipeline.storage.store import Output

PART = 20_000  # candidates a part of the display order holds (uneven rows aside)
STYLE, SEQ = "__style", "__seq"  # the part's columns: the style's place in the order, the table's row number
BARE = ""  # the style key of a row without a style (sorted last)


@dataclass(frozen=True)
class Results:
    """A results table as the report reads it: its column names, and `read(columns)`, the columns
    it has of those, a batch at a time (as often as asked)."""

    names: list[str]
    read: Callable[[list[str]], Iterator[pa.RecordBatch]]

    @classmethod
    def of_table(cls, table: pa.Table) -> Results:
        def read(columns: list[str]) -> Iterator[pa.RecordBatch]:
            return iter(table.select([c for c in columns if c in table.column_names]).to_batches(tables.BATCH_ROWS))
        return cls(table.column_names, read)

    @classmethod
    def of_output(cls, out: Output) -> Results:
        """`results.parquet` of an output, never read whole."""
        return cls(records.results_names(out), lambda columns: records.iter_parquet(out, layout.RESULTS, columns))


def style_key(style: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The style as the order sees it: no style, an empty one and `NO_STYLE` are one, `BARE`."""
    style = pc.fill_null(style, BARE)
    return pc.if_else(pc.equal(style, NO_STYLE), BARE, style)


def row_key(row: pa.Array | pa.ChunkedArray) -> pa.Array:
    """The manifest row as the order sees it: a candidate without one is row 0."""
    return pc.fill_null(row, 0)


class Parts:
    """The display order cut into parts: a style's candidates counted with their span of rows,
    then each style numbered in the order (`BARE` last) and its rows mapped to part numbers."""

    def __init__(self):
        self.count: Counter = Counter()
        self.low: dict[str, int] = {}
        self.high: dict[str, int] = {}

    def add(self, style: pa.Array, row: pa.Array) -> None:
        seen = pa.table({"s": style_key(style), "r": row_key(row)}).group_by("s").aggregate(
            [("r", "count"), ("r", "min"), ("r", "max")])
        for s, n, low, high in zip(*(seen[c].to_pylist() for c in ("s", "r_count", "r_min", "r_max")), strict=True):
            self.count[s] += n
            self.low[s] = min(low, self.low.get(s, low))
            self.high[s] = max(high, self.high.get(s, high))

    def close(self) -> None:
        """Number the styles (Python orders str as Arrow orders UTF-8) and their parts: each
        style's `first` part, its `low_row` and the `width` in rows of each of its parts."""
        part = PART
        self.styles = sorted(s for s in self.count if s != BARE) + ([BARE] if BARE in self.count else [])
        first, low, width = [], [], []
        parts, shared = 0, None  # shared: candidates in the part small styles share, while it is open
        for s in self.styles:
            n, span = self.count[s], self.high[s] - self.low[s] + 1
            cuts = max(1, min(span, -(-n // part)))  # a small style (or a single row) is one part
            step = -(-span // cuts)
            if cuts == 1 and shared is not None and shared + n <= part:
                first.append(parts - 1)  # next to the small style before it
                shared += n
            else:
                first.append(parts)
                parts += -(-span // step)
                shared = n if cuts == 1 else None
            low.append(self.low[s])
            width.append(step)
        self.first, self.low_row, self.width = (np.array(v, np.int64) for v in (first, low, width))
        self.names = pa.array(self.styles, pa.string())

    def of(self, style: pa.Array, row: pa.Array) -> tuple[pa.Array, np.ndarray]:
        """Each candidate's style number and part."""
        rank = pc.index_in(style_key(style), value_set=self.names)
        r, at = row_key(row).to_numpy(zero_copy_only=False), rank.to_numpy(zero_copy_only=False)
        return rank, self.first[at] + (r - self.low_row[at]) // self.width[at]


def spill(batches: Iterable[pa.Table], parts: Parts, folder: Path) -> Spill | None:
    """`batches` in a spill under their part numbers (in the table's order within one), with
    their style's number (`STYLE`) and their row number in the table (`SEQ`); None: no rows."""
    spilled, seq = None, 0
    try:
        for batch in batches:
            rank, part = parts.of(batch["style"], batch["row"])
            table = batch.append_column(STYLE, rank).append_column(
                SEQ, pa.array(np.arange(seq, seq + len(part), dtype=np.int64)))
            seq += len(part)
            spilled = spilled or Spill(folder / "order.arrow", table.schema)
            for number, piece in split(table, part):
                spilled.add(number, piece)
    except BaseException:
        if spilled is not None:
            spilled.close()
        raise
    return spilled


def sort_part(part: pa.Table) -> pa.Table:
    """A part in the display order: style, manifest row, id, candidate, then the table's order."""
    keys = pa.table({"s": part[STYLE], "row": row_key(part["row"]), "id": part["id"],
                     "k": pc.fill_null(part["candidate"], 0), "seq": part[SEQ]})
    return part.take(pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names]))


def in_display_order(results: Results, columns: list[str], folder: Path,
                     prepare: Callable[[pa.RecordBatch], pa.Table] = pa.table) -> Iterator[pa.Table]:
    """The `columns` of `results` (read twice), one part at a time in display order; each batch
    goes through `prepare` (a table of it) before it is spilled. Temp files go to `folder`."""
    parts = Parts()
    for batch in results.read(["style", "row"]):
        parts.add(batch["style"], batch["row"])
    parts.close()
    spilled = spill((prepare(b) for b in results.read(columns)), parts, folder)
    if spilled is None:
        return
    try:
        for number in sorted(spilled.keys_with_rows()):
            yield sort_part(spilled.read(number))
            pa.default_memory_pool().release_unused()  # see `tables.batches`
    finally:
        spilled.close()
