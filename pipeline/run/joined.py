"""Plans joined with the committed state, read back in plan order a chunk at a time.

The plan is in manifest order; the state is cut by ranges of item ids. So the join goes the
way of an external hash join, in three passes, each holding one chunk or one range:
  1. every plan chunk's item ids go to a spill under their range, with where they sit
     (chunk number, offset);
  2. each range: its latest outcomes (files checked) looked up for the plan's ids of that
     range, the found outcome (or nulls) written back under (range, chunk);
  3. `chunks()`: each plan chunk with its outcomes, gathered from every range and put back
     in plan order.
Resume, the formats' sources and compaction all read their outcomes this way; a phase that
needs to see every range on the way (strays, brand figures, consolidation) passes `visit`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.plan.build import PlanFile
from pipeline.run import keyspace
from pipeline.run.outcomes import outcome_schema
from pipeline.run.state import Range, State
from pipeline.storage.spill import Spill, split

OFFSET = "__offset"  # a plan row's place in its chunk
KEY_SCHEMA = pa.schema([pa.field("item_id", pa.string()), pa.field("__chunk", pa.int32()),
                        pa.field(OFFSET, pa.int32())])


class Joined:
    """`plans` (read one after another, like one plan) joined with `state`'s outcomes: every
    outcome column, or (`columns`) only these beside the item id and the files. A narrow join
    reads and spills a fraction: resume's count of a finished 20M-candidate output took 143 s
    with every column, 51 s with two. A `visit` sees whole ranges, so it takes every column."""

    def __init__(self, state: State, plans: list[PlanFile], folder: Path,
                 visit: Callable[[Range], None] | None = None, columns: list[str] | None = None):
        if visit and columns is not None:
            raise ValueError("a visit sees whole ranges: join every column")
        self.plans, self.ranges, self.columns = plans, len(state.prefixes()), columns
        self.schema = pa.schema([*outcome_schema(columns), pa.field(OFFSET, pa.int32())])
        # 1. the plan's item ids by range, with where each sits
        # Uncompressed spills: a join writes and reads one batch a range and plan chunk (51,200
        # at 20M candidates, each of a few hundred rows), where compression's cost a batch is
        # most of the work: a compaction of 20M candidates took 259 s with LZ4, 181 s without
        # (its spill about 10 GB on the driver's disk instead of 6)
        keys = Spill(folder / "join-keys.arrow", KEY_SCHEMA, compressed=False)
        try:
            for number, chunk in enumerate(c for p in plans for c in p.chunks(["item_id"])):
                ids = chunk["item_id"]
                ranges = keyspace.range_numbers(ids, state.digits)
                where = pa.table({"item_id": ids, "__chunk": pa.array(np.full(len(ids), number, np.int32)),
                                  OFFSET: pa.array(np.arange(len(ids), dtype=np.int32))})
                for r, part in split(where, ranges):
                    keys.add(r, part)
            # 2. each range's outcomes for the plan's ids in it, by (range, chunk)
            self.outcomes = Spill(folder / "join.arrow", self.schema, compressed=False)
            wanted = set(keys.keys_with_rows())
            for number, prefix in enumerate(state.prefixes()):
                if not visit and number not in wanted:
                    continue
                found = state.range(number, prefix, columns)
                if visit:
                    visit(found)
                self._join(number, keys.read(number), found.outcomes)
        finally:
            keys.close()

    def _join(self, number: int, keys: pa.Table, outcomes: pa.Table) -> None:
        if not keys.num_rows:
            return
        matched = outcomes.take(pc.index_in(keys["item_id"], value_set=outcomes["item_id"]))
        matched = matched.append_column(OFFSET, keys[OFFSET])
        for c, part in split(matched, keys["__chunk"].to_numpy()):
            self.outcomes.add(_piece(number, c), part)

    def chunks(self, columns: list[str] | None = None) -> Iterator[tuple[pa.Table, pa.Table]]:
        """Each plan chunk (its `columns`, all when None) with its rows' latest committed
        outcomes (OUTCOME_SCHEMA, or the join's columns; null where there is none), row for row."""
        number = 0
        for plan in self.plans:
            for chunk in plan.chunks(columns):
                yield chunk, self.outcomes_of(number, chunk.num_rows)
                number += 1

    def outcomes_of(self, number: int, rows: int) -> pa.Table:
        parts = [self.outcomes.read(_piece(r, number)) for r in range(self.ranges)]
        table = pa.concat_tables(parts)
        table = table.take(pc.sort_indices(table[OFFSET]))
        if table.num_rows != rows or (rows and table[OFFSET][rows - 1].as_py() != rows - 1):
            raise AssertionError(f"plan chunk {number}: {table.num_rows} outcomes joined for {rows} rows")
        return table.drop_columns([OFFSET])

    def close(self) -> None:
        self.outcomes.close()


def visit_all(*visitors: Callable[[Range], None]) -> Callable[[Range], None]:
    """One visit that hands each range to every visitor in turn."""
    def visit(found: Range) -> None:
        for v in visitors:
            v(found)
    return visit


def _piece(number: int, chunk: int) -> int:
    """The spill key of range `number`'s outcomes for plan chunk `chunk`."""
    return number << 32 | chunk
