"""Results: atomic shards while running, resume from them, one compacted table at the end.

A shard is a Parquet file committed by rename, holding whole manifest rows only, so a crash
never leaves half a row or half a file. On rerun, the item ids in committed shards are done;
the final table joins the current plan with the latest outcome of each of its item ids.
"""

from __future__ import annotations

import json
import os
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import faults, schema

SHARDS = "_shards"
RESULTS = "results.parquet"
SUMMARY = "summary.json"


def _atomic_parquet(table: pa.Table, path: Path, kill_point: tuple[str, int] | None = None) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    try:
        pq.write_table(table, tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        if kill_point:
            faults.kill_if(*kill_point)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


@dataclass(frozen=True)
class DoneState:
    """What earlier attempts finished (errors excluded): item ids, selected count per row."""

    item_ids: frozenset[str]
    selected_per_row: dict[str, int]


class ShardStore:
    """The `_shards` folder of an output directory."""

    def __init__(self, output_dir: Path):
        self.dir = Path(output_dir) / SHARDS
        self.dir.mkdir(parents=True, exist_ok=True)
        self._next = len(self.paths())  # names sort in commit order; the suffix keeps them unique

    def paths(self) -> list[Path]:
        return sorted(p for p in self.dir.glob("part-*.parquet"))

    def read(self) -> pa.Table | None:
        tables = [pq.read_table(p) for p in self.paths()]
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def write(self, table: pa.Table, kill_point: tuple[str, int] | None = None) -> Path:
        path = self.dir / f"part-{self._next:06d}-{uuid.uuid4().hex[:8]}.parquet"
        _atomic_parquet(table, path, kill_point)
        self._next += 1
        return path

    def done(self, plan: pa.Table) -> DoneState:
        """Outcomes already committed for item ids of the current plan."""
        shards = self.read()
        if shards is None:
            return DoneState(frozenset(), {})
        # Errors are not done: a rerun retries them.
        shards = shards.filter(pc.and_(pc.is_in(shards["item_id"], plan["item_id"]),
                                       pc.not_equal(shards["status"], schema.ERROR)))
        ids = frozenset(shards["item_id"].to_pylist())
        selected = Counter(i for i, s in zip(shards["id"].to_pylist(), shards["selected"].to_pylist(),
                                             strict=True) if s)
        return DoneState(ids, dict(selected))


def compact(plan: pa.Table, output_dir: Path) -> pa.Table:
    """The results table: every plan row with its latest committed outcome, plan order."""
    shards = ShardStore(output_dir).read()
    outcome_names = [f.name for f in schema.OUTCOME_FIELDS]
    if shards is None:
        shards = pa.Table.from_pylist([], schema=pa.schema([pa.field("item_id", pa.string()),
                                                            pa.field("path", pa.string()),
                                                            pa.field("truncated", pa.bool_())]
                                                           + schema.OUTCOME_FIELDS))
    for f in schema.OUTCOME_FIELDS:  # shards committed by a version before the column existed
        if f.name not in shards.column_names:
            shards = shards.append_column(f, pa.nulls(shards.num_rows, f.type))
    # Latest outcome per item id: later shards win (a retry of an error, a rerun after a change).
    order = pa.array(range(shards.num_rows), pa.int64())
    latest = pa.table({"item_id": shards["item_id"], "order": order}).group_by("item_id").aggregate(
        [("order", "max")])
    shards = shards.take(latest["order_max"])
    # Look up each plan row's outcome by item id: a take, not a join, so any passthrough type
    # (lists, structs, dictionaries) rides along untouched and plan order is kept.
    where = pc.index_in(plan["item_id"], shards["item_id"])
    outcome = shards.select(["path", "truncated", *outcome_names]).take(where)
    table = plan
    for name in ("path", "truncated"):  # the written path (null when none) replaces the planned one
        table = table.set_column(table.schema.get_field_index(name), name, outcome[name])
    for name in outcome_names:
        table = table.append_column(name, outcome[name])
    ordered = [f.name for f in schema.RESULTS_SCHEMA] + [c for c in plan.column_names
                                                         if c not in schema.RESERVED_NAMES]
    return table.select(ordered).cast(pa.schema([*schema.RESULTS_SCHEMA, *(plan.schema.field(c) for c in ordered
                                                                            if c not in schema.RESERVED_NAMES)]))


def write_results(table: pa.Table, output_dir: Path) -> Path:
    path = Path(output_dir) / RESULTS
    _atomic_parquet(table, path)
    return path


def remove_strays(results: pa.Table, output_dir: Path) -> list[str]:
    """Delete image files not listed in the results, and temp files of killed writes."""
    listed = {p for p in results["path"].to_pylist() if p}
    removed = []
    images = Path(output_dir) / "images"
    for p in images.rglob("*") if images.exists() else []:
        rel = p.relative_to(output_dir).as_posix()
        if p.is_file() and rel not in listed:
            p.unlink()
            removed.append(rel)
    for p in Path(output_dir).rglob(".tmp-*"):
        p.unlink(missing_ok=True)
    return removed


def summarize(results: pa.Table) -> dict:
    """The funnel: planned → generated → passed moderation → passed CLIP (`passed_filters`) →
    selected → written, with counts per reason."""
    status = results["status"].to_pylist()
    reasons = [r.split(":")[0] if r else r for r in results["reason"].to_pylist()]
    ms = results["ms_generate"].to_pylist()
    counts = Counter(status)
    reason_counts = Counter(r for r in reasons if r)
    generated = sum(1 for m in ms if m is not None)
    scoring_errors = reason_counts["score"]
    return {
        "planned": results.num_rows,
        "finished": sum(1 for s in status if s is not None),
        "generated": generated,
        # Image moderation runs before the CLIP threshold: each step counts what passed it.
        "passed_moderation": generated - reason_counts[schema.IMAGE_UNSAFE] - scoring_errors,
        "passed_filters": sum(1 for s, r in zip(status, reasons, strict=True)
                              if s == schema.WRITTEN or r == schema.NOT_SELECTED),
        "selected": sum(1 for s in results["selected"].to_pylist() if s),
        "written": counts.get(schema.WRITTEN, 0),
        "rejected": counts.get(schema.REJECTED, 0),
        "error": counts.get(schema.ERROR, 0),
        "pending": counts.get(None, 0),
        "reasons": dict(reason_counts),
        # Per generated candidate: generate + score + moderate on the model actor (GPU-seconds
        # on a GPU); per written image: encode + sign + write + verify on the CPU writers.
        "model_s_per_candidate": _mean_sum(results, ("ms_generate", "ms_score", "ms_moderate")),
        "cpu_s_per_written_image": _mean_sum(results, ("ms_encode", "ms_sign", "ms_write", "ms_verify")),
    }


def _mean_sum(results: pa.Table, columns: tuple[str, ...]) -> float | None:
    """Mean over rows where the first column is set, of the columns' sum, in seconds."""
    present = pc.is_valid(results[columns[0]])
    if not pc.any(present).as_py():
        return None
    total = None
    for c in columns:
        col = pc.fill_null(results[c].filter(present), 0.0)
        total = col if total is None else pc.add(total, col)
    return round(pc.mean(total).as_py() / 1000, 6)


def write_json(obj: dict, path: Path) -> None:
    tmp = path.with_name(f".tmp-{path.name}")
    tmp.write_text(json.dumps(obj, indent=2, default=str) + "\n")
    os.replace(tmp, path)
