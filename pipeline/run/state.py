"""The committed state of an output, read a range of item ids at a time, in bounded memory.

What an output has committed is its consolidated generation (`_state/current.json` and the
range files it names: the latest outcome of every item id as of a compaction) and the shards
committed since (numbered after the generation's last). `State` copies the shards once to a
spill on the driver's disk, cut by range; `State.ranges()` then yields each range's latest
outcomes with the files of that range listed beside them. No phase holds more than a range.

The one rule for what a rerun trusts (DESIGN.md "Storage and exactly-once"), applied per range:
- the *latest* committed outcome of an item id is its outcome (generation, then shards in
  commit order, then row order within a shard: `outcomes.latest`);
- a file that a latest outcome lists is never deleted (`Range.listed`);
- an outcome whose file is gone (its image, or the clean one beside an overlaid image) is no
  outcome: the item is pending again (`Range.outcomes` leaves it out). A preview is no such
  file; only previews no latest outcome lists are strays.
"""

from __future__ import annotations

import itertools
import posixpath
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.run import keyspace
from pipeline.run.generation import Generation
from pipeline.run.outcomes import (
    EMBEDDING_SCHEMA,
    FILE_COLUMNS,
    OUTCOME_SCHEMA,
    merge_latest,
    normalised,
    outcome_schema,
)
from pipeline.storage import layout
from pipeline.storage.records import read_parquet
from pipeline.storage.spill import Spill, split
from pipeline.storage.store import Output, as_output

SPILL_ROWS = 65_536  # rows a spill buffers across ranges before writing them out
SPILL_BYTES = 64 << 20  # or bytes
READERS, REMOTE_READERS = 2, 16  # shards read at once: local files, objects (a request or two each)
READ_WINDOW = 64  # shards read ahead at most, in commit order
BYTES_PER_OUTCOME = 64  # fewer than a shard's Parquet spends on one: estimates err high


@dataclass
class Range:
    """One range of item ids: its latest outcomes, and the files of the range."""

    prefix: str
    latest: pa.Table  # every item id's latest outcome (OUTCOME_SCHEMA), whether its files are there or not
    files: set[str]  # the image files present in the range
    previews: set[str]  # the previews present in the range
    _embeddings: object = None

    @cached_property
    def listed(self) -> set[str]:
        """Every image a latest outcome lists, present or not: never deleted."""
        return {p for c in FILE_COLUMNS for p in pc.unique(self.latest[c]).to_pylist() if p}

    @cached_property
    def outcomes(self) -> pa.Table:
        """The latest outcomes whose files are all there (the others are pending again)."""
        present = pa.array(sorted(self.files), pa.string())
        intact = pc.and_(*(pc.or_(pc.is_null(self.latest[c]), pc.is_in(self.latest[c], present))
                           for c in FILE_COLUMNS))
        return self.latest if pc.all(intact).as_py() is not False else self.latest.filter(intact)

    def strays(self) -> list[str]:
        """Image files no latest outcome lists (a killed run's unlisted writes, a replaced image)."""
        return sorted(self.files - self.listed)

    def stray_previews(self) -> list[str]:
        listed = {p for p in pc.unique(self.latest["preview_path"]).to_pylist() if p}
        return sorted(self.previews - listed)

    def embeddings(self) -> pa.Table:
        """The latest image embedding of each item id of the range (EMBEDDING_SCHEMA)."""
        return self._embeddings()


class State:
    """The committed outcomes of an output, cut into ranges of item ids (see the module's
    docstring). `folder` is the driver's temp folder for its spills; `expected` how many
    outcomes the caller expects (a plan's size), so the ranges are cut small enough from the start."""

    def __init__(self, output: Output | Path | str, folder: Path, expected: int = 0):
        self.out = as_output(output)
        self.folder = folder
        self.generation = Generation.current(self.out)
        self.seen = self.generation.through  # shards numbered up to here are in the state
        self.segments: list[tuple[Spill, Spill]] = []  # (outcomes, embeddings) by range number
        self._live: tuple[_Splitter, _Splitter] | None = None  # this run's commits, as they happen
        delta = self._delta()
        estimate = self.generation.outcomes + sum(delta.values()) // BYTES_PER_OUTCOME
        self.digits = keyspace.digits_for(max(estimate, expected))
        self.refresh(delta)

    def _delta(self) -> dict[str, int]:
        """The committed shards not yet in the state, with their sizes."""
        return {rel: size for rel, size in self.out.sizes(layout.SHARDS).items()
                if layout.is_part(rel) and layout.part_number(rel) > self.seen}

    def _segment(self) -> tuple[_Splitter, _Splitter]:
        n = len(self.segments) + (self._live is not None)
        return (_Splitter(Spill(self.folder / f"state-{n}.arrow", OUTCOME_SCHEMA), self.digits, normalised),
                _Splitter(Spill(self.folder / f"state-{n}-embeddings.arrow", EMBEDDING_SCHEMA), self.digits,
                          _embedding_rows))

    def took(self, number: int, outcomes: pa.Table, embeddings: pa.Table | None) -> None:
        """A shard this run just committed (`ShardStore`'s `on_commit`), taken in from memory:
        a run never reads back the shards it wrote. Only the next shard in number order is
        taken; any other is left for `refresh` to read."""
        if number != self.seen + 1:
            return
        if self._live is None:
            self._live = self._segment()
        self._live[0].add(outcomes.select([c for c in OUTCOME_SCHEMA.names if c in outcomes.column_names]))
        if embeddings is not None:
            self._live[1].add(embeddings)
        self.seen = number

    def refresh(self, delta: dict[str, int] | None = None) -> int:
        """Take in the shards committed since the last look: those `took` got as they were
        committed, then any other (a killed run's, an older release's), read a few at a time in
        parallel (on object storage each is a request or two). How many were read."""
        if self._live is not None:
            self.segments.append((self._live[0].done(), self._live[1].done()))
            self._live = None
        shards = sorted(delta if delta is not None else self._delta(), key=layout.part_number)
        if not shards:
            return 0
        outcomes, embeddings = self._segment()
        sidecars = {posixpath.basename(r) for r in self.out.files(layout.EMBEDDINGS) if layout.is_part(r)}

        def read(rel: str) -> tuple[pa.Table, pa.Table | None]:
            name = posixpath.basename(rel)
            sidecar = f"{layout.EMBEDDINGS}/{name}"
            return (read_parquet(self.out, rel, OUTCOME_SCHEMA.names),
                    read_parquet(self.out, sidecar) if name in sidecars else None)

        with ThreadPoolExecutor(READERS if self.out.local else REMOTE_READERS) as pool:
            for start in range(0, len(shards), READ_WINDOW):
                for table, sidecar in pool.map(read, shards[start:start + READ_WINDOW]):
                    outcomes.add(table)
                    if sidecar is not None:
                        embeddings.add(sidecar)
        self.segments.append((outcomes.done(), embeddings.done()))
        self.seen = max(self.seen, layout.part_number(shards[-1]))
        return len(shards)

    @property
    def committed(self) -> int:
        """Outcomes ever committed: the generation's count and every shard taken in since."""
        return self.generation.committed + sum(outcomes.rows for outcomes, _ in self.segments)

    def prefixes(self) -> list[str]:
        return keyspace.prefixes(self.digits)

    def ranges(self) -> Iterator[Range]:
        """Every range in item-id order, with its latest outcomes and files."""
        for number, prefix in enumerate(self.prefixes()):
            yield self.range(number, prefix)

    def range(self, number: int, prefix: str, columns: list[str] | None = None) -> Range:
        """Range `number` (its `prefix`): its latest outcomes, embeddings (read when asked) and
        files; `columns`: only these outcome columns beside the item id and the files (resume's
        count reads two of 56: the range files are read column by column)."""
        merged = self.latest_of(number, prefix, columns)

        def embeddings() -> pa.Table:
            return merge_latest(self._generation_rows(self.generation.embeddings, prefix, EMBEDDING_SCHEMA),
                           [e.read(number) for _, e in self.segments])

        return Range(prefix, merged, _listing(self.out, layout.IMAGES, prefix),
                     _listing(self.out, layout.PREVIEWS, prefix), embeddings)

    def latest_of(self, number: int, prefix: str, columns: list[str] | None = None) -> pa.Table:
        """The latest outcome of every item id of one range, whether its files are there or not
        (`columns`: see `range`)."""
        schema = outcome_schema(columns)
        return merge_latest(self._generation_rows(self.generation.parts, prefix, schema),
                       [outcomes.read(number).select(schema.names) for outcomes, _ in self.segments])

    def other_row(self, rows: set[str]) -> str | None:
        """A manifest id, not among `rows`, that the output holds outcomes of (its committed
        outcomes, or its results table), or None: one range or batch held at a time."""
        from pipeline.storage.records import iter_parquet

        wanted = pa.array(sorted(rows), pa.string())
        ids = (self.latest_of(n, p, ["id"])["id"] for n, p in enumerate(self.prefixes()))
        if self.out.exists(layout.RESULTS):
            ids = itertools.chain(ids, (b.column(0) for b in iter_parquet(self.out, layout.RESULTS, ["id"])))
        for column in ids:
            other = pc.drop_null(pc.filter(column, pc.invert(pc.is_in(column, wanted))))
            if len(other):
                return other[0].as_py()
        return None

    def _generation_rows(self, parts: dict[str, str], prefix: str, target: pa.Schema) -> pa.Table:
        """The rows of the generation's range files that fall in `prefix`."""
        found = []
        for part_prefix, rel in sorted(parts.items()):
            if keyspace.overlaps(part_prefix, prefix):
                found.append(_read_range(self.out, rel, prefix, target))
        return pa.concat_tables(found) if found else target.empty_table()

    def close(self) -> None:
        if self._live is not None:
            self.segments.append((self._live[0].spill, self._live[1].spill))
            self._live = None
        for outcomes, embeddings in self.segments:
            outcomes.close()
            embeddings.close()
        self.segments = []


class _Splitter:
    """Rows into a spill under their range number, buffered across ranges (SPILL_ROWS rows or
    SPILL_BYTES, whichever comes first: an embedding is 3 kB) and split when written out.
    `prepare` (`normalised`) runs on each buffer, not on each shard: a shard is 256 rows, and
    its column-by-column fix-ups cost as much as reading it."""

    def __init__(self, spill: Spill, digits: int, prepare: Callable[[pa.Table], pa.Table]):
        self.spill, self.digits, self.prepare = spill, digits, prepare
        self.buffered: list[pa.Table] = []
        self.rows = self.bytes = 0

    def add(self, table: pa.Table) -> None:
        if not table.num_rows:
            return
        self.buffered.append(table)
        self.rows += table.num_rows
        self.bytes += table.nbytes
        if self.rows >= SPILL_ROWS or self.bytes >= SPILL_BYTES:
            self.flush()

    def flush(self) -> None:
        if self.buffered:
            try:  # shards of older releases lack columns: null there, as `prepare` would make them
                table = self.prepare(pa.concat_tables(self.buffered, promote_options="default"))
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # a column typed otherwise: one at a time
                table = pa.concat_tables([self.prepare(t) for t in self.buffered])
            self.buffered, self.rows, self.bytes = [], 0, 0
            for number, rows in split(table, keyspace.range_numbers(table["item_id"], self.digits)):
                self.spill.add(number, rows)

    def done(self) -> Spill:
        self.flush()
        return self.spill


def _embedding_rows(table: pa.Table) -> pa.Table:
    """A sidecar's rows as EMBEDDING_SCHEMA (sidecars before channel formats have no `variant`)."""
    if "variant" not in table.column_names:
        table = table.append_column("variant", pa.nulls(table.num_rows, pa.string()))
    return table.select(EMBEDDING_SCHEMA.names).cast(EMBEDDING_SCHEMA)


def _read_range(out: Output, rel: str, prefix: str, target: pa.Schema) -> pa.Table:
    """The rows of a range file (sorted by item id) in `prefix`: only the row groups whose item
    ids can fall there are read."""
    with out.open(rel) as f, pq.ParquetFile(f) as parquet:
        column = parquet.schema_arrow.get_field_index("item_id")
        groups = []
        for g in range(parquet.metadata.num_row_groups):
            stats = parquet.metadata.row_group(g).column(column).statistics
            if stats is None or not stats.has_min_max or _may_hold(stats.min, stats.max, prefix):
                groups.append(g)
        table = (parquet.read_row_groups(groups, columns=target.names, use_threads=False) if groups
                 else target.empty_table())
    table = table.cast(target)
    return table.filter(keyspace.within(table["item_id"], prefix)) if prefix else table


def _may_hold(low: str, high: str, prefix: str) -> bool:
    """Whether ids between `low` and `high` can start with `prefix`."""
    return low[:len(prefix)] <= prefix <= high[:len(prefix)]


def _listing(out: Output, folder: str, prefix: str) -> set[str]:
    """The files under `folder` (images or previews, by their first two digits) in a range."""
    return out.files_starting(folder, keyspace.listing_start(prefix))
