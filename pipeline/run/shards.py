"""Committed shards: the commit points of a run, and the one rule for what a rerun trusts.

A shard is a Parquet file committed whole (locally by rename, on object storage by one PUT),
holding whole manifest rows only, so a crash never leaves half a row or half a file.
`ShardStore.committed` states the one rule for what a rerun trusts and what may be deleted:
resume, compaction, stray removal and verify all ask it.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.judge.outcome import with_reason_codes
from pipeline.spec import schema, vocabulary
from pipeline.storage import layout, tables
from pipeline.storage.records import read_parquet, read_results
from pipeline.storage.store import Output, as_output


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
    - an outcome that lists a file which is gone (its image, or the clean one beside an
      overlaid image) is not an outcome at all: the item is pending again and reruns
      (`outcomes` leaves it out). A preview is no such file: derived and disposable, one that
      is gone changes nothing; only the previews no latest outcome lists are strays (`previews`).
    """

    outcomes: pa.Table  # one row per item id: its latest outcome, files present
    listed: frozenset[str]  # every image path a latest outcome lists (present or not)
    files: frozenset[str]  # the image files present when it was read
    previews: frozenset[str] = frozenset()  # every preview a latest outcome lists (never an image)

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
        done = pc.fill_null(pc.not_equal(o["status"].cast(pa.string()), vocabulary.ERROR), False)
        other_rules = pc.fill_null(pc.not_equal(o["judged_with"].cast(pa.string()), plan["judge_key"]), True)
        return done, pc.and_(done, other_rules)


# Outcome columns with few distinct values, kept dictionary-encoded in memory.
DICTIONARY_COLUMNS = ("scheduler", "run_id", "job", "clip_model", "moderation", "moderation_model", "status",
                      "c2pa_state", "worker", "writer", "judged_with")


# The columns of a committed outcome that the results table takes (the rest comes from the plan).
OUTCOME_SCHEMA = pa.schema([pa.field("item_id", pa.string()), pa.field("id", pa.string()),
                            pa.field("path", pa.string()), pa.field("truncated", pa.bool_()),
                            pa.field("truncated_by", pa.string()),
                            pa.field("scheduler", pa.string()), *schema.OUTCOME_FIELDS])


def read_part(out: Output, rel: str, columns: list[str] | None, keep: np.ndarray | None = None) -> pa.Table:
    """One Parquet part (a shard, a sidecar): the `columns` it has, its rows where `keep`, read
    by ranges. Repeated strings (status, run, worker, model names) stay dictionary-encoded."""
    table = read_parquet(out, rel, columns or None, DICTIONARY_COLUMNS)
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
    """The shards (`_shards/`) of an output folder or prefix."""

    def __init__(self, output: Output | Path | str):
        self.out = as_output(output)
        self._next = len(self.paths())  # names sort in commit order; the suffix keeps them unique
        self.written = 0  # shards this store committed (one run: its manifest rows', then its formats')

    def paths(self) -> list[str]:
        return sorted(p for p in self.out.files(layout.SHARDS) if layout.is_part(p))

    def read(self, columns: list[str] | None = None) -> pa.Table | None:
        """Every committed row; `columns` that a shard of an older release lacks are left out."""
        parts = [t for t in (read_part(self.out, p, columns) for p in self.paths()) if t.num_rows]
        return pa.concat_tables(parts, promote_options="default") if parts else None

    def write(self, table: pa.Table, kill_point: tuple[str, int] | None = None) -> str:
        """Commit outcomes as the next shard. Their image embeddings, if any, go first into a
        sidecar of the same name under `_embeddings/`: a sidecar whose shard never committed
        (a killed run) only repeats an embedding the rerun makes again."""
        name = layout.part_name(self._next, uuid.uuid4().hex[:8])
        embedding = schema.EMBEDDING_FIELD.name
        if embedding in table.column_names:
            kept = ["item_id", "style", *(["variant"] if "variant" in table.column_names else []), embedding]
            measured = table.filter(pc.is_valid(table[embedding])).select(kept)
            if measured.num_rows:
                self.out.put(f"{layout.EMBEDDINGS}/{name}", tables.to_bytes(measured))
            table = table.drop_columns([embedding])
        rel = f"{layout.SHARDS}/{name}"
        self.out.put(rel, tables.to_bytes(table), kill_point=kill_point)
        self._next += 1
        self.written += 1
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
        latest = with_reason_codes(latest)  # shards committed before the column: by their code
        listed = frozenset(p for column in ("path", "clean_path") for p in pc.unique(latest[column]).to_pylist() if p)
        files = image_files(self.out)
        present = pa.array(sorted(listed & files), pa.string())
        intact = pc.and_(*(pc.or_(pc.is_null(latest[column]), pc.is_in(latest[column], present))
                           for column in ("path", "clean_path")))
        previews = frozenset(p for p in pc.unique(latest["preview_path"]).to_pylist() if p)
        return Committed(latest if pc.all(intact).as_py() is not False else latest.filter(intact),
                         listed, frozenset(files), previews)


def row_ids(output: Output | Path | str) -> set[str]:
    """Manifest ids an output holds outcomes of: its committed shards and its results."""
    out = as_output(output)
    committed = ShardStore(out).read(["id"])
    ids = set(committed["id"].to_pylist()) if committed is not None else set()
    if out.exists(layout.RESULTS):
        ids |= set(read_results(out, ["id"])["id"].to_pylist())
    return ids


def image_files(output: Output | Path | str) -> set[str]:
    """Every image file of an output, as paths relative to it (temp files excluded)."""
    return as_output(output).files(layout.IMAGES)
