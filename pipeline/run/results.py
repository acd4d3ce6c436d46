"""Results: atomic shards while running, resume from them, one compacted table at the end.

A shard is a Parquet file committed by rename, holding whole manifest rows only, so a crash
never leaves half a row or half a file. `ShardStore.committed` states the one rule for what a
rerun trusts and what may be deleted; the final table joins the current plan with the latest
outcome of each of its item ids.
"""

from __future__ import annotations

import json
import posixpath
import shutil
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.spec import schema
from pipeline.storage import tables
from pipeline.storage.store import Output, as_output
from pipeline.storage.write import TEMP_PREFIX

SHARDS = "_shards"
EMBEDDINGS = "_embeddings"
RUNS = "_runs"  # a record per run: its config, versions and models
NO_STYLE = "(no style)"  # figures of rows without a style
RESULTS = "results.parquet"
SUMMARY = "summary.json"


class ItemIndex:
    """Finds item ids in a table: their 64-bit hashes sorted once, so each lookup costs its own
    length, not the table's. (`pc.index_in` hashes the whole table at every call, about 1.3 s
    per 4M outcomes: once per plan chunk, that grew with the square of the run.)"""

    def __init__(self, item_ids: pa.Array | pa.ChunkedArray):
        self.ids = item_ids.combine_chunks() if isinstance(item_ids, pa.ChunkedArray) else item_ids
        hashes = _hash(self.ids)
        self.order = np.argsort(hashes, kind="stable")
        self.sorted = hashes[self.order]

    def lookup(self, item_ids: pa.Array | pa.ChunkedArray) -> pa.Array:
        """The position of each id in the table (int64), null where it is not there."""
        n = len(self.sorted)
        if not n or not len(item_ids):
            return pa.nulls(len(item_ids), pa.int64())
        query = item_ids.combine_chunks() if isinstance(item_ids, pa.ChunkedArray) else item_ids
        hashes = _hash(query)
        pos = np.minimum(np.searchsorted(self.sorted, hashes), n - 1)
        hit = self.sorted[pos] == hashes
        where = self.order[pos]
        same = hit & pc.equal(self.ids.take(pa.array(where)), query).to_numpy(zero_copy_only=False)
        if (hit & ~same).any():  # two ids with one hash (about 1 in 10^7 at 20M ids): ask the slow way
            clash = np.flatnonzero(hit & ~same)
            found = pc.index_in(query.take(pa.array(clash)), self.ids).to_numpy(zero_copy_only=False)
            where, same = where.copy(), same.copy()
            ok = ~np.isnan(found.astype(float))
            where[clash[ok]], same[clash[ok]] = found[ok].astype(np.int64), True
        return pa.array(where, pa.int64(), mask=~same)


def _hash(ids: pa.Array) -> np.ndarray:
    return pl.Series(ids).hash(seed=0).to_numpy()


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

    @cached_property
    def index(self) -> ItemIndex:
        return ItemIndex(self.outcomes["item_id"])

    def outcome_of(self, plan: pa.Table) -> pa.Table:
        """The latest committed outcome of each plan row, in plan order: null where there is none
        (plain types: the dictionary-encoded columns decoded)."""
        return self.outcomes.take(self.index.lookup(plan["item_id"])).cast(OUTCOME_SCHEMA)

    def judged(self, plan: pa.Table) -> tuple[pa.Array, pa.Array]:
        """Which plan rows have a finished outcome (errors are not done: a rerun retries them),
        and which of those were judged under other rules than the plan's (`judge_key`)."""
        o = self.outcomes.select(["status", "judged_with"]).take(self.index.lookup(plan["item_id"]))
        done = pc.fill_null(pc.not_equal(o["status"].cast(pa.string()), schema.ERROR), False)
        other_rules = pc.fill_null(pc.not_equal(o["judged_with"].cast(pa.string()), plan["judge_key"]), True)
        return done, pc.and_(done, other_rules)


def read_part(out: Output, rel: str, columns: list[str] | None, keep: np.ndarray | None = None) -> pa.Table:
    """One Parquet part (a shard, a sidecar): the `columns` it has, its rows where `keep`, read
    by ranges. Repeated strings (status, run, worker, model names) stay dictionary-encoded."""
    if out.local:
        table = tables.read(out.where(rel), columns or None, DICTIONARY_COLUMNS)
    else:
        with out.open(rel) as f:
            table = tables.read(f, columns or None, DICTIONARY_COLUMNS)
    return table.filter(pa.array(keep)) if keep is not None else table


def latest_rows(out: Output, paths: list[str], columns: list[str]) -> Iterator[pa.Table]:
    """The rows of parts committed in order (`paths`) that hold each item id's latest record,
    a part at a time.

    Two passes, so the rows that are not latest are never held: every part's item ids first
    (which row is each id's latest), then each part's kept rows."""
    ids = [read_part(out, p, ["item_id"])["item_id"] for p in paths]
    sizes = [len(a) for a in ids]
    keep = np.zeros(sum(sizes), bool)
    if sum(sizes):
        order = pa.array(np.arange(len(keep)), pa.int64())
        latest = pa.table({"item_id": pa.chunked_array(ids), "order": order}).group_by("item_id").aggregate(
            [("order", "max")])
        keep[latest["order_max"].to_numpy()] = True
    del ids
    starts = np.cumsum([0, *sizes])
    for p, a, b in zip(paths, starts, starts[1:], strict=False):
        if keep[a:b].any():
            yield read_part(out, p, columns, keep[a:b])


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
        tables = [t for t in (read_part(self.out, p, columns) for p in self.paths()) if t.num_rows]
        return pa.concat_tables(tables, promote_options="default") if tables else None

    def write(self, table: pa.Table, kill_point: tuple[str, int] | None = None) -> str:
        """Commit outcomes as the next shard. Their image embeddings, if any, go first into a
        sidecar of the same name under `_embeddings/`: a sidecar whose shard never committed
        (a killed run) only repeats an embedding the rerun makes again."""
        name = f"part-{self._next:06d}-{uuid.uuid4().hex[:8]}.parquet"
        embedding = schema.EMBEDDING_FIELD.name
        if embedding in table.column_names:
            measured = table.filter(pc.is_valid(table[embedding])).select(["item_id", "style", embedding])
            if measured.num_rows:
                self.out.put(f"{EMBEDDINGS}/{name}", tables.to_bytes(measured))
            table = table.drop_columns([embedding])
        rel = f"{SHARDS}/{name}"
        self.out.put(rel, tables.to_bytes(table), kill_point=kill_point)
        self._next += 1
        return rel

    def committed(self) -> Committed:
        """The latest outcome of every item id, checked against the files present (one listing)."""
        parts = list(latest_rows(self.out, self.paths(), OUTCOME_SCHEMA.names))
        latest = (pa.concat_tables(parts, promote_options="default") if parts
                  else OUTCOME_SCHEMA.empty_table())
        for f in OUTCOME_SCHEMA:  # shards committed by a version before the column existed
            if f.name not in latest.column_names:
                latest = latest.append_column(f, pa.nulls(latest.num_rows, f.type))
        latest = latest.select(OUTCOME_SCHEMA.names)
        listed = frozenset(p for p in pc.unique(latest["path"]).to_pylist() if p)
        files = image_files(self.out)
        paths_ = latest["path"]
        intact = pc.or_(pc.is_null(paths_), pc.is_in(paths_, pa.array(sorted(listed & files), pa.string())))
        return Committed(latest if pc.all(intact).as_py() is not False else latest.filter(intact),
                         listed, frozenset(files))


# Outcome columns with few distinct values, kept dictionary-encoded in memory.
DICTIONARY_COLUMNS = ("scheduler", "run_id", "job", "clip_model", "moderation", "moderation_model", "status",
                      "c2pa_state", "worker", "writer", "judged_with")


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


def gpu_seconds(outcome: pa.Table) -> pa.Array:
    """Model-actor seconds of each candidate that ran there (null where it did not)."""
    ran = pc.is_valid(outcome["ms_generate"])
    total = outcome["ms_generate"]
    for name in ("ms_score", "ms_moderate"):
        total = pc.add(total, pc.fill_null(outcome[name], 0.0))
    return pc.if_else(ran, pc.divide(total, 1000.0), pa.scalar(None, pa.float64()))


def compact(plan: pa.Table, committed: Committed, gpu_hour_usd: float | None = None) -> pa.Table:
    """The results table of plan rows (a chunk of the plan, or all of it): each with its latest
    committed outcome, plan order, and its GPU time and cost (at `gpu_hour_usd`, else null)."""
    outcome_names = [f.name for f in schema.OUTCOME_FIELDS]
    # Look up each plan row's outcome by item id: a take, not a join, so any passthrough type
    # (lists, structs, dictionaries) rides along untouched and plan order is kept.
    outcome = committed.outcome_of(plan)
    table = plan
    for name in ("path", "truncated"):  # the written path (null when none) replaces the planned one
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


def write_results(plan_chunks: Iterable[pa.Table], committed: Committed, output: Output | Path | str,
                  gpu_hour_usd: float | None = None, before_commit: Callable[[], None] | None = None) -> dict:
    """Compact the plan, chunk by chunk, into `results.parquet` (replaced whole, never seen half
    written); returns the summary of what it wrote (with the GPU-hour price it used).
    `before_commit` (the lock's check) runs just before the table replaces the old one."""
    summary, writer = Summary(), None
    with as_output(output).staged(RESULTS, before_commit) as path:
        try:
            for chunk in plan_chunks:
                table = compact(chunk, committed, gpu_hour_usd)
                writer = writer or pq.ParquetWriter(path, table.schema)
                writer.write_table(table)
                summary.add(table)
            if writer is None:  # no plan rows: still a results table, with the columns
                pq.write_table(schema.RESULTS_SCHEMA.empty_table(), path)
        finally:
            if writer:
                writer.close()
    return {**summary.result(), "gpu_hour_usd": gpu_hour_usd}


def read_results(output: Output | Path | str, columns: list[str] | None = None) -> pa.Table:
    out = as_output(output)
    return tables.read(out.where(RESULTS) if out.local else out.get(RESULTS), columns)


def remove_strays(committed: Committed, output: Output | Path | str,
                  before_delete: Callable[[], None] | None = None) -> list[str]:
    """Delete image files no latest committed outcome lists (a killed run's unlisted writes, an
    image a re-judging replaced) and the temp files killed writes leave. A listed file is never
    deleted. `before_delete` (the lock's check) runs before each file goes: a stray of this
    run's view may be a file that a run which took the output over has listed since."""
    out = as_output(output)
    removed = sorted(committed.files - committed.listed)
    for rel in removed:
        if before_delete:
            before_delete()
        out.delete(rel)
    remove_temp(out)
    return removed


# Where local writes put their temp files: the output folder itself (results, summary, the demo
# signer's folder), the shard and run-record folders, and each image folder. (A PUT to object
# storage is whole or absent: it leaves no temp objects.)
TEMP_GLOBS = (TEMP_PREFIX + "*", f"{SHARDS}/{TEMP_PREFIX}*", f"{EMBEDDINGS}/{TEMP_PREFIX}*", f"{RUNS}/{TEMP_PREFIX}*",
              f"images/*/{TEMP_PREFIX}*")


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

    # model time and no generation error: a candidate whose generation failed on every attempt
    # carries the time those attempts cost (it is paid for), not an image
    failed = pc.and_(pc.equal(pc.fill_null(results["status"], ""), schema.ERROR),
                     pc.starts_with(pc.fill_null(results["reason"], ""), f"{schema.GENERATE_ERROR}:"))
    generated = pc.and_(valid("ms_generate"), pc.invert(failed))
    moderated = pc.and_(pc.and_(generated, valid("image_unsafe_score")),
                        pc.equal(pc.fill_null(results["moderation"], ""), schema.PASS))
    ranked = pc.and_(moderated, valid("rank"))
    selected = pc.and_(ranked, pc.fill_null(results["selected"], False))
    signed = pc.and_(selected, valid("ms_sign"))
    written = pc.and_(signed, pc.equal(pc.fill_null(results["status"], ""), schema.WRITTEN))
    return {"generated": generated, "passed_moderation": moderated, "passed_filters": ranked,
            "selected": selected, "signed": signed, "written": written}


class Summary:
    """The funnel, counted a chunk of the results at a time: planned → generated → passed
    moderation → passed CLIP (`passed_filters`) → selected → signed → written, with counts per
    status and reason, and the mean model and CPU time per image."""

    # Per generated candidate: generate + score + moderate on the model actor (GPU-seconds on
    # a GPU); per written image: encode + sign + write + verify on the CPU writers.
    TIMES = {"model_s_per_candidate": ("ms_generate", "ms_score", "ms_moderate"),
             "cpu_s_per_written_image": ("ms_encode", "ms_sign", "ms_write", "ms_verify")}

    def __init__(self):
        self.planned = 0
        self.steps: Counter = Counter()
        self.status: Counter = Counter()
        self.reasons: Counter = Counter()
        self.times = {name: [0.0, 0] for name in self.TIMES}  # total ms, rows counted
        self.truncated = 0  # candidates whose prompt the text encoder cut
        self.reference: dict[str, list] = {}  # style → [sum, count] of its written images' reference similarity
        self.gpu_s = 0.0
        self.cost: float | None = None  # None: no row was priced

    def add(self, results: pa.Table) -> Summary:
        self.planned += results.num_rows
        self.status.update(results["status"].to_pylist())
        self.truncated += pc.sum(pc.cast(pc.fill_null(results["truncated"], False), pa.int64())).as_py() or 0
        if "reference_similarity" in results.column_names:  # results of older releases lack it
            kept = results.filter(pc.and_(pc.equal(results["status"], schema.WRITTEN),
                                          pc.is_valid(results["reference_similarity"])))
            grouped = kept.group_by("style").aggregate([("reference_similarity", "sum"),
                                                         ("reference_similarity", "count")])
            for style, total, n in zip(*(grouped[c].to_pylist() for c in ("style", "reference_similarity_sum",
                                                                          "reference_similarity_count")), strict=True):
                entry = self.reference.setdefault(style if style is not None else NO_STYLE, [0.0, 0])
                entry[0] += total
                entry[1] += n
        codes = [results[n] for n in ("reason_code", "reason") if n in results.column_names]  # by code, never text
        self.reasons.update(c for c in pc.coalesce(*codes).to_pylist() if c)  # (rows from before codes: their reason)
        for name, mask in funnel(results).items():
            self.steps[name] += pc.sum(pc.cast(mask, pa.int64())).as_py() or 0
        for name, columns in self.TIMES.items():
            present = pc.is_valid(results[columns[0]])
            self.times[name][0] += sum(pc.sum(results[c].filter(present)).as_py() or 0.0 for c in columns)
            self.times[name][1] += pc.sum(pc.cast(present, pa.int64())).as_py() or 0
        if "gpu_s" in results.column_names:  # results of a release before costs lack them
            self.gpu_s += pc.sum(results["gpu_s"]).as_py() or 0.0
            cost = pc.sum(results["cost_usd"]).as_py()
            if cost is not None:
                self.cost = (self.cost or 0.0) + cost
        return self

    def result(self) -> dict:
        return {
            "planned": self.planned,
            "finished": self.planned - self.status.get(None, 0),
            **{name: self.steps[name] for name in FUNNEL},
            "rejected": self.status.get(schema.REJECTED, 0),
            "error": self.status.get(schema.ERROR, 0),
            "pending": self.status.get(None, 0),
            "reasons": dict(self.reasons),
            **{name: round(total / count / 1000, 6) if count else None for name, (total, count) in self.times.items()},
            "truncated_prompts": self.truncated,
            "reference_similarity": {s: round(total / n, 4) for s, (total, n) in sorted(self.reference.items())},
            # every candidate that ran counts, so over-generation is in the cost per written image
            "gpu_s_total": round(self.gpu_s, 6),
            "cost_usd_total": self.cost,
            "cost_per_written_image_usd": (self.cost / self.steps["written"]
                                           if self.cost is not None and self.steps["written"] else None),
        }


FUNNEL = ("generated", "passed_moderation", "passed_filters", "selected", "signed", "written")


def summarize(results: pa.Table) -> dict:
    """The funnel of a whole results table (see `Summary`)."""
    return Summary().add(results).result()




def brand_consistency(committed: Committed, output: Output | Path | str, reference: dict | None = None) -> dict:
    """Per style, how alike its written images are: the mean pairwise cosine of their CLIP image
    embeddings, from the `_embeddings` sidecars. For unit vectors the mean over pairs is
    (|Σe|² − n) / (n(n−1)), so it streams: a sum and a count per style, no pairwise matrix.
    `reference`: the mean similarity of each style's written images to its reference image
    (`Summary`), added where the style has one."""
    out = as_output(output)
    paths = sorted(p for p in out.files(EMBEDDINGS) if posixpath.basename(p).startswith("part-"))
    column = schema.EMBEDDING_FIELD.name
    sums: dict[str, tuple[np.ndarray, int]] = {}
    # an item measured twice (a killed run's sidecar, then the rerun's) counts once: its latest
    for table in latest_rows(out, paths, ["item_id", "style", column]):
        status = committed.outcomes["status"].take(committed.index.lookup(table["item_id"])).cast(pa.string())
        table = table.filter(pc.fill_null(pc.equal(status, schema.WRITTEN), False))
        if not table.num_rows:
            continue
        vectors = np.stack(table[column].to_numpy(zero_copy_only=False)).astype(np.float64)
        styles = np.array([s if s is not None else NO_STYLE for s in table["style"].to_pylist()], object)
        for style in set(styles):
            total, n = sums.get(style, (0.0, 0))
            chosen = vectors[styles == style]
            sums[style] = (total + chosen.sum(axis=0), n + len(chosen))
    figures = {style: {"images": n, "mean_pairwise_cosine": (round(float((total @ total - n) / (n * (n - 1))), 4)
                                                             if n > 1 else None)}
               for style, (total, n) in sorted(sums.items())}
    for style, similarity in (reference or {}).items():
        figures.setdefault(style, {"images": 0, "mean_pairwise_cosine": None})["reference_similarity"] = similarity
    return figures


def write_json(obj: dict, output: Output | Path | str, rel: str) -> None:
    as_output(output).put(rel, (json.dumps(obj, indent=2, default=str) + "\n").encode())
