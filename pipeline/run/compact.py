"""Compaction: one results table from the plan and the committed outcomes, and the clean-up after.

The results table is the current plan with the latest committed outcome of each of its item
ids (run/joined.py), a plan chunk at a time, and replaces the old table whole. Then every image
file (and preview) no latest outcome lists goes, and every temp file killed local writes left.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.run.state import Range
from pipeline.run.summary import Summary
from pipeline.spec import schema
from pipeline.storage import layout
from pipeline.storage.store import Output, as_output


def gpu_seconds(outcome: pa.Table) -> pa.Array:
    """Model-actor seconds of each candidate that ran there (null where it did not)."""
    ran = pc.is_valid(outcome["ms_generate"])
    total = outcome["ms_generate"]
    for name in ("ms_score", "ms_moderate"):
        total = pc.add(total, pc.fill_null(outcome[name], 0.0))
    return pc.if_else(ran, pc.divide(total, 1000.0), pa.scalar(None, pa.float64()))


def compact(plan: pa.Table, outcome: pa.Table, gpu_hour_usd: float | None = None) -> pa.Table:
    """The results table of plan rows (a chunk of the plan) with `outcome`, their latest
    committed outcomes row for row: plan order, and each row's GPU time and cost (at
    `gpu_hour_usd`, else null). Passthrough columns of any type ride along untouched."""
    outcome_names = [f.name for f in schema.OUTCOME_FIELDS]
    table = plan
    for name in ("path", "truncated", "truncated_by"):  # the written path (null when none) replaces the planned one
        table = table.set_column(table.schema.get_field_index(name), name, outcome[name])
    # The scheduler class that ran; the configured name (or null) for what has not run yet.
    ran = pc.coalesce(outcome["scheduler"], plan["scheduler"])
    table = table.set_column(table.schema.get_field_index("scheduler"), "scheduler", ran)
    for name in outcome_names:
        table = table.append_column(name, outcome[name])
    gpu_s = gpu_seconds(outcome)
    table = table.append_column("gpu_s", gpu_s)
    table = table.append_column("cost_usd", pc.multiply(gpu_s, gpu_hour_usd / 3600) if gpu_hour_usd is not None
                                else pa.nulls(table.num_rows, pa.float64()))
    ordered = [f.name for f in schema.RESULTS_SCHEMA] + [c for c in plan.column_names
                                                         if c not in schema.RESERVED_NAMES]
    return table.select(ordered).cast(pa.schema([*schema.RESULTS_SCHEMA, *(plan.schema.field(c) for c in ordered
                                                                            if c not in schema.RESERVED_NAMES)]))


def write_results(joined: Iterable[tuple[pa.Table, pa.Table]], output: Output | Path | str,
                  gpu_hour_usd: float | None = None, before_commit: Callable[[], None] | None = None) -> dict:
    """Compact the plan, chunk by chunk with its outcomes (`joined`), into `results.parquet`
    (replaced whole, never seen half written); returns the summary of what it wrote (with the
    GPU-hour price it used).
    `before_commit` (the lock's check) runs just before the table replaces the old one."""
    summary, writer = Summary(), None
    with as_output(output).staged(layout.RESULTS, before_commit) as path:
        try:
            for chunk, outcome in joined:
                table = compact(chunk, outcome, gpu_hour_usd)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                summary.add(table)
            if writer is None:  # no plan rows: still a results table, with the columns
                pq.write_table(schema.RESULTS_SCHEMA.empty_table(), path)
        finally:
            if writer:
                writer.close()
    return {**summary.result(), "gpu_hour_usd": gpu_hour_usd}


class Strays:
    """Image files no latest committed outcome lists (a killed run's unlisted writes, an image
    a re-judging replaced), and previews none lists (a killed run's, a candidate's that
    moderation now blocks), gathered range by range as a join visits them (`__call__`) into a
    file on the driver's disk: however many there are, none is held."""

    def __init__(self, path: Path):
        self.path = path
        self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 — open across visits, closed in `remove`
        self.images = 0

    def __call__(self, found: Range) -> None:
        for rel in found.strays():
            self._file.write(f"I{rel}\n")
            self.images += 1
        for rel in found.stray_previews():
            self._file.write(f"P{rel}\n")

    def remove(self, output: Output | Path | str, before_delete: Callable[[], None] | None = None,
               keep: int = 1000) -> list[str]:
        """Delete them, and the temp files killed writes left. A listed file is never deleted.
        `before_delete` (the lock's check) runs before each batch goes: a stray of this run's
        view may be a file that a run which took the output over has listed since. Returns the
        first `keep` images removed (previews are not images: never among them)."""
        out = as_output(output)
        self._file.close()
        removed: list[str] = []
        with open(self.path, encoding="utf-8") as f:
            batch: list[str] = []
            for line in f:
                rel = line[1:].rstrip("\n")
                if line[0] == "I" and len(removed) < keep:
                    removed.append(rel)
                batch.append(rel)
                if len(batch) == 1000:
                    out.delete_many(batch, before_delete)
                    batch = []
            out.delete_many(batch, before_delete)
        self.path.unlink(missing_ok=True)
        remove_temp(out)
        return sorted(removed)


def remove_temp(output: Output | Path | str) -> None:
    """Delete the temp files and folders (`.tmp-*`) that killed local writes leave in the places
    the pipeline writes to; a folder goes whole, a symlink as a link (never its target)."""
    out = as_output(output)
    if not out.local:
        return
    for pattern in layout.TEMP_GLOBS:
        for p in Path(out.root).glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
