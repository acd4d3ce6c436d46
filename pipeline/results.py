"""Results: atomic shards while running, resume from them, one compacted table at the end.

A shard is a Parquet file committed by rename, holding whole manifest rows only, so a crash
never leaves half a row or half a file. `ShardStore.committed` states the one rule for what a
rerun trusts and what may be deleted; the final table joins the current plan with the latest
outcome of each of its item ids.
"""

from __future__ import annotations

import io
import json
import posixpath
import shutil
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline import schema
from pipeline.store import Output, as_output
from pipeline.write import TEMP_PREFIX

SHARDS = "_shards"
RESULTS = "results.parquet"
SUMMARY = "summary.json"


def parquet_bytes(table: pa.Table) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


@dataclass(frozen=True)
class Committed:
    """What the committed shards of an output folder say, under one rule used by resume,
    compaction, stray removal and verify:

    - the *latest* committed outcome of an item id is its outcome (a retry or a re-judging
      commits a newer one);
    - a file that a latest outcome lists is never deleted (`listed`);
    - an outcome that lists a file which is gone is not an outcome at all: the item is pending
      again and reruns (`outcomes` leaves it out).
    """

    outcomes: pa.Table  # one row per item id: its latest outcome, files present
    listed: frozenset[str]  # every path a latest outcome lists (present or not)
    files: frozenset[str]  # the image files present when it was read


class ShardStore:
    """The `_shards` of an output folder or prefix."""

    def __init__(self, output: Output | Path | str):
        self.out = as_output(output)
        self._next = len(self.paths())  # names sort in commit order; the suffix keeps them unique

    def paths(self) -> list[str]:
        return sorted(p for p in self.out.files(SHARDS)
                      if posixpath.basename(p).startswith("part-") and p.endswith(".parquet"))

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every committed row; `columns` that a shard of an older release lacks are left out."""
        tables = []
        for p in self.paths():
            shard = pq.ParquetFile(io.BytesIO(self.out.get(p)))
            names = shard.schema_arrow.names
            tables.append(shard.read(columns=[c for c in columns if c in names] if columns else None))
        tables = [t for t in tables if t.num_rows]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def write(self, table: pa.Table, kill_point: tuple[str, int] | None = None) -> str:
        rel = f"{SHARDS}/part-{self._next:06d}-{uuid.uuid4().hex[:8]}.parquet"
        self.out.put(rel, parquet_bytes(table), kill_point=kill_point)
        self._next += 1
        return rel

    def committed(self) -> Committed:
        """The latest outcome of every item id, checked against the files present (one listing)."""
        shards = self.read(OUTCOME_SCHEMA.names)
        if shards is None:
            shards = OUTCOME_SCHEMA.empty_table()
        for f in OUTCOME_SCHEMA:  # shards committed by a version before the column existed
            if f.name not in shards.column_names:
                shards = shards.append_column(f, pa.nulls(shards.num_rows, f.type))
        order = pa.array(range(shards.num_rows), pa.int64())
        latest = pa.table({"item_id": shards["item_id"], "order": order}).group_by("item_id").aggregate(
            [("order", "max")])
        latest = shards.take(latest["order_max"])
        paths = latest["path"]
        listed = frozenset(p for p in paths.to_pylist() if p)
        files = image_files(self.out)
        intact = pc.or_(pc.is_null(paths), pc.is_in(paths, pa.array(sorted(listed & files), pa.string())))
        return Committed(latest.filter(intact), listed, frozenset(files))


# The columns of a committed outcome that the results table takes (the rest comes from the plan).
OUTCOME_SCHEMA = pa.schema([pa.field("item_id", pa.string()), pa.field("id", pa.string()),
                            pa.field("path", pa.string()), pa.field("truncated", pa.bool_()),
                            pa.field("scheduler", pa.string()), *schema.OUTCOME_FIELDS])


def row_ids(output: Output | Path | str) -> set[str]:
    """Manifest ids an output holds outcomes of: its committed shards and its results."""
    out = as_output(output)
    committed = ShardStore(out).read(["id"])
    ids = set(committed["id"].to_pylist()) if committed is not None else set()
    if out.exists(RESULTS):
        ids |= set(read_results(out, ["id"])["id"].to_pylist())
    return ids


def image_files(output: Output | Path | str) -> set[str]:
    """Every image file of an output, as paths relative to it (temp files excluded)."""
    return as_output(output).files("images")


def done_item_ids(committed: Committed) -> pa.Array:
    """Item ids with a finished outcome: errors are not done (a rerun retries them)."""
    o = committed.outcomes
    return o.filter(pc.not_equal(o["status"], schema.ERROR))["item_id"].combine_chunks()


def compact(plan: pa.Table, committed: Committed) -> pa.Table:
    """The results table: every plan row with its latest committed outcome, plan order."""
    shards = committed.outcomes
    outcome_names = [f.name for f in schema.OUTCOME_FIELDS]
    # Look up each plan row's outcome by item id: a take, not a join, so any passthrough type
    # (lists, structs, dictionaries) rides along untouched and plan order is kept.
    where = pc.index_in(plan["item_id"], shards["item_id"])
    outcome = shards.select(["path", "truncated", "scheduler", *outcome_names]).take(where)
    table = plan
    for name in ("path", "truncated"):  # the written path (null when none) replaces the planned one
        table = table.set_column(table.schema.get_field_index(name), name, outcome[name])
    # The scheduler class that ran; the configured name (or null) for what has not run yet.
    ran = pc.coalesce(outcome["scheduler"], plan["scheduler"])
    table = table.set_column(table.schema.get_field_index("scheduler"), "scheduler", ran)
    for name in outcome_names:
        table = table.append_column(name, outcome[name])
    ordered = [f.name for f in schema.RESULTS_SCHEMA] + [c for c in plan.column_names
                                                         if c not in schema.RESERVED_NAMES]
    return table.select(ordered).cast(pa.schema([*schema.RESULTS_SCHEMA, *(plan.schema.field(c) for c in ordered
                                                                            if c not in schema.RESERVED_NAMES)]))


def write_results(table: pa.Table, output: Output | Path | str) -> str:
    as_output(output).put(RESULTS, parquet_bytes(table))
    return RESULTS


def read_results(output: Output | Path | str, columns: list[str] | None = None) -> pa.Table:
    return pq.read_table(io.BytesIO(as_output(output).get(RESULTS)), columns=columns)


def remove_strays(committed: Committed, output: Output | Path | str) -> list[str]:
    """Delete image files no latest committed outcome lists (a killed run's unlisted writes, an
    image a re-judging replaced) and the temp files killed writes leave. A listed file is never
    deleted."""
    out = as_output(output)
    removed = sorted(committed.files - committed.listed)
    for rel in removed:
        out.delete(rel)
    remove_temp(out)
    return removed


# Where local writes put their temp files: the output folder itself (results, summary, the demo
# signer's folder), the shard and run-record folders, and each image folder. (A PUT to object
# storage is whole or absent: it leaves no temp objects.)
TEMP_GLOBS = (TEMP_PREFIX + "*", f"{SHARDS}/{TEMP_PREFIX}*", f"_runs/{TEMP_PREFIX}*", f"images/*/{TEMP_PREFIX}*")


def remove_temp(output: Output | Path | str) -> None:
    """Delete the temp files and folders (`.tmp-*`) that killed local writes leave in the places
    the pipeline writes to; a folder goes whole, a symlink as a link (never its target)."""
    out = as_output(output)
    if not out.local:
        return
    for pattern in TEMP_GLOBS:
        for p in Path(out.root).glob(pattern):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)


def funnel(results: pa.Table) -> dict[str, pa.Array]:
    """Each step of the funnel as a mask over the results, every one a subset of the one before:
    generated (it has pixels) → passed moderation (its image was measured and judged safe) →
    passed the CLIP threshold (it was ranked: ranks go to candidates that passed every filter) →
    selected (picked for a place) → signed → written."""
    def valid(name: str) -> pa.Array:
        return pc.is_valid(results[name])

    generated = valid("ms_generate")
    moderated = pc.and_(pc.and_(generated, valid("image_unsafe_score")),
                        pc.equal(pc.fill_null(results["moderation"], ""), "pass"))
    ranked = pc.and_(moderated, valid("rank"))
    selected = pc.and_(ranked, pc.fill_null(results["selected"], False))
    signed = pc.and_(selected, valid("ms_sign"))
    written = pc.and_(signed, pc.equal(pc.fill_null(results["status"], ""), schema.WRITTEN))
    return {"generated": generated, "passed_moderation": moderated, "passed_filters": ranked,
            "selected": selected, "signed": signed, "written": written}


def summarize(results: pa.Table) -> dict:
    """The funnel: planned → generated → passed moderation → passed CLIP (`passed_filters`) →
    selected → signed → written, with counts per status and reason."""
    status = results["status"].to_pylist()
    reasons = [r.split(":")[0] if r else r for r in results["reason"].to_pylist()]
    counts = Counter(status)
    steps = {name: pc.sum(pc.cast(mask, pa.int64())).as_py() or 0 for name, mask in funnel(results).items()}
    return {
        "planned": results.num_rows,
        "finished": sum(1 for s in status if s is not None),
        **steps,
        "rejected": counts.get(schema.REJECTED, 0),
        "error": counts.get(schema.ERROR, 0),
        "pending": counts.get(None, 0),
        "reasons": dict(Counter(r for r in reasons if r)),
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


def write_json(obj: dict, output: Output | Path | str, rel: str) -> None:
    as_output(output).put(rel, (json.dumps(obj, indent=2, default=str) + "\n").encode())
