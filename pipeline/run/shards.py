"""Committed shards: the commit points of a run.

A shard is a Parquet file committed whole (locally by rename, on object storage by one PUT),
holding whole manifest rows only, so a crash never leaves half a row or half a file. Shards
are numbered in commit order; a consolidation (run/consolidate.py) later folds them into one
file per range of item ids, and what a rerun trusts is read through `run/state.py`.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.spec import schema
from pipeline.storage import layout, tables
from pipeline.storage.records import read_parquet
from pipeline.storage.store import Output, as_output


class ShardStore:
    """The shards (`_shards/`) of an output folder or prefix."""

    def __init__(self, output: Output | Path | str,
                 on_commit: Callable[[int, pa.Table, pa.Table | None], None] | None = None):
        from pipeline.run.generation import Generation

        self.out = as_output(output)
        # told of each shard as it commits: its number, outcomes and embeddings (the state)
        self.on_commit = on_commit
        # numbers go on after every part there and every one a consolidation covered (gone now)
        self._next = max([Generation.current(self.out).through, *map(layout.part_number, self.paths())]) + 1
        self.written = 0  # shards this store committed (one run: its manifest rows', then its formats')

    def paths(self) -> list[str]:
        return sorted((p for p in self.out.files(layout.SHARDS) if layout.is_part(p)), key=layout.part_number)

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every row of the shards not consolidated yet; `columns` that a shard of an older
        release lacks are left out."""
        parts = [t for t in (read_parquet(self.out, p, columns) for p in self.paths()) if t.num_rows]
        return pa.concat_tables(parts, promote_options="default") if parts else None

    def write(self, table: pa.Table, kill_point: tuple[str, int] | None = None) -> str:
        """Commit outcomes as the next shard. Their image embeddings, if any, go first into a
        sidecar of the same name under `_embeddings/`: a sidecar whose shard never committed
        (a killed run) only repeats an embedding the rerun makes again."""
        name = layout.part_name(self._next, uuid.uuid4().hex[:8])
        embedding, measured = schema.EMBEDDING_FIELD.name, None
        if embedding in table.column_names:
            kept = ["item_id", "style", *(["variant"] if "variant" in table.column_names else []), embedding]
            measured = table.filter(pc.is_valid(table[embedding])).select(kept)
            if measured.num_rows:
                self.out.put(f"{layout.EMBEDDINGS}/{name}", tables.to_bytes(measured))
            table = table.drop_columns([embedding])
        rel = f"{layout.SHARDS}/{name}"
        self.out.put(rel, tables.to_bytes(table), kill_point=kill_point)
        if self.on_commit:
            self.on_commit(self._next, table, measured if measured is not None and measured.num_rows else None)
        self._next += 1
        self.written += 1
        return rel
