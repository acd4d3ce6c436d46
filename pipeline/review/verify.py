"""`pipeline verify DIR`: every written image re-read, its sha256 and C2PA manifest checked
against the results table (`verify_check`); files that neither the table nor a committed shard
lists, and listed files that are gone, are problems too.

At scale: the results table is streamed in batches, a bounded pool of threads reads and checks
images (reads from object storage wait on the network), `--sample N` checks a reproducible
random sample (a seeded reservoir over the stream: the table is never held), and a progress
line goes to stderr every few seconds on large outputs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from pipeline.review.verify_check import COLUMNS, FILES, Checked, Entry, check, entries
from pipeline.run.progress import interval_from_env
from pipeline.storage.layout import DEMO_CA, RESULTS
from pipeline.storage.records import count_valid, iter_parquet, latest_run
from pipeline.storage.store import Output, as_output


class MissingAnchors(ValueError):
    """A trust-anchor file that was asked for is gone: verifying without it would check less than asked."""


def read_anchors(out: Output, trust_anchors: str | None) -> bytes | None:
    """The PEM of the CAs to trust: the file given; else the run's own: its demo CA in demo
    mode, or the trust anchors it was configured with (None when it had none)."""
    if trust_anchors:
        path = Path(trust_anchors)
        if not path.is_file():
            raise MissingAnchors(f"{path}: trust anchors not found (--trust-anchors)")
        return path.read_bytes()
    latest = latest_run(out)
    signer = latest.record["config"]["signer"] if latest else {}
    if out.exists(DEMO_CA) or signer.get("mode") == "demo":
        if not out.exists(DEMO_CA):
            raise MissingAnchors(f"{out.where(DEMO_CA)}: trust anchors not found (the run's demo CA)")
        return out.get(DEMO_CA)
    configured = signer.get("trust_anchors")
    if not configured:
        return None
    if not Path(configured).is_file():
        raise MissingAnchors(f"{configured}: trust anchors not found ([signer].trust_anchors of "
                             f"{latest.name})")
    return Path(configured).read_bytes()


DEFAULT_SEED = 0  # `--sample`'s seed unless one is given: the same sample every time
PROGRESS_MIN = 2_000  # images from which progress lines are worth printing


def default_workers(out: Output) -> int:
    """Threads that read and check images at once. On object storage Python's own default for
    I/O-bound pools (cores + 4, at most 32): reads wait on the network. On a local disk one a
    core: the checks are CPU work (the watermark's read most) that releases the GIL only in
    parts, and more threads than cores were slower (bench/RESULTS.md, "verify")."""
    cores = os.cpu_count() or 1
    return cores if out.local else min(32, cores + 4)


def verify_output(output: Output | Path | str, trust_anchors: str | None = None, *, workers: int | None = None,
                  sample: int | None = None, seed: int = DEFAULT_SEED, say: Callable[[str], None] | None = None,
                  progress_every: float | None = None, progress_min: int = PROGRESS_MIN) -> tuple[list[str], int]:
    """(problems, images checked). No problems means every promise of the table holds.

    `workers` threads check images at once (default: `default_workers`); problems come sorted
    by path whatever finishes first. `sample`: check that many listed images, drawn with `seed`, not all. `say` hears
    what a command line prints on stderr: the sample drawn, and a progress line every
    `progress_every` seconds (default $ASSET_PIPELINE_LOG_INTERVAL) when `progress_min` images
    or more are checked. The results table is streamed: memory holds a batch of its rows and
    an image per worker, never the table or every image."""
    out = as_output(output)
    if not out.exists(RESULTS):
        return [f"{out.where(RESULTS)}: no results table"], 0
    try:
        anchors = read_anchors(out, trust_anchors)
    except MissingAnchors as e:
        return [str(e)], 0
    todo = _listed(out)
    if sample is not None:
        drawn, seen = draw(todo, sample, seed)
        todo, total = iter(drawn), len([e for e in drawn if e.rel])
        if say:
            say(f"sampled {total} of {seen} images with seed {seed}")
    else:
        total = count_valid(out, RESULTS, FILES)
    progress = Progress(total, say if total >= progress_min else None, progress_every)
    found: list[tuple[str, int, str]] = []  # (path or item, entry, problem)
    checked = 0
    for done in checked_in_pool(todo, lambda e: check(out, e, anchors), workers or default_workers(out)):
        checked += done.read
        found += [(done.entry.rel or done.entry.item, done.entry.index, p) for p in done.problems]
        progress.step(done.entry.rel is not None, len(found))
    progress.close(len(found))
    # A file of an earlier plan (a prompt since edited) stays listed by its committed outcome;
    # every file the results table lists is one a latest committed outcome lists.
    for rel in unlisted_files(out):
        found.append((rel, -1, f"{rel}: file not listed in the results table nor in any committed shard"))
    return [p for *_, p in sorted(found, key=lambda f: f[:2])], checked


def unlisted_files(out: Output) -> Iterator[str]:
    """Image files neither the results table nor a latest committed outcome lists, a range of
    item ids at a time (the table's files spilled by range first: an image's range is its item id's)."""
    import tempfile

    import pyarrow as pa

    from pipeline.run import keyspace
    from pipeline.run.state import State
    from pipeline.storage.spill import Spill, split

    with tempfile.TemporaryDirectory(prefix="asset-pipeline-verify-") as folder:
        state = State(out, Path(folder))
        files = pa.schema([pa.field(c, pa.string()) for c in ("item_id", *FILES)])
        table = Spill(Path(folder) / "results-files.arrow", files)
        try:
            for batch in iter_parquet(out, RESULTS, files.names):
                batch = pa.Table.from_batches([batch])
                for column in (c for c in files.names if c not in batch.column_names):  # older tables
                    batch = batch.append_column(column, pa.nulls(batch.num_rows, pa.string()))
                for r, part in split(batch.select(files.names), keyspace.range_numbers(batch["item_id"], state.digits)):
                    table.add(r, part)
            for number, found in enumerate(state.ranges()):
                listed = table.read(number)
                in_table = {p for c in FILES for p in listed[c].to_pylist() if p}
                yield from (rel for rel in found.strays() if rel not in in_table)
        finally:
            table.close()
            state.close()


def _listed(out: Output) -> Iterator[Entry]:
    """Every entry of the results table in order, a batch of rows at a time."""
    start = 0
    for batch in iter_parquet(out, RESULTS, COLUMNS):
        found = entries(batch, start)
        start += batch.num_rows * 2
        yield from found


def draw(listing: Iterable[Entry], n: int, seed: int) -> tuple[list[Entry], int]:
    """(`n` files drawn at random from `listing`, in listing order; how many files it lists).
    Each file gets a key from one stream seeded by `seed` and the `n` smallest keys stay: the
    same sample for the same table and seed, holding `n` entries, never the table. Entries
    without a file (problems of the table alone) all stay."""
    import numpy as np

    if n < 1:
        raise ValueError(f"a sample is at least one image, got {n}")
    rng = np.random.default_rng(seed)
    kept: list[Entry] = []
    keys = np.empty(0)
    always: list[Entry] = []
    seen = 0
    for chunk in _chunks(listing, 4096):
        files = [e for e in chunk if e.rel]
        always += [e for e in chunk if not e.rel]
        seen += len(files)
        drawn = rng.random(len(files))
        if len(kept) == n:  # only a key below the largest kept one can take a place
            below = np.flatnonzero(drawn < keys.max())
            files, drawn = [files[i] for i in below], drawn[below]
        kept, keys = kept + files, np.concatenate([keys, drawn])
        if len(kept) > n:
            best = np.argpartition(keys, n - 1)[:n]
            kept, keys = [kept[i] for i in best], keys[best]
    return sorted(kept + always, key=lambda e: e.index), seen


def _chunks(items: Iterable[Entry], size: int) -> Iterator[list[Entry]]:
    chunk: list[Entry] = []
    for item in items:
        chunk.append(item)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def checked_in_pool(todo: Iterable[Entry], check_one: Callable[[Entry], Checked], workers: int) -> Iterator[Checked]:
    """`check_one` of every entry, as each finishes, on `workers` threads; at most two entries a
    worker are in flight, so memory holds that many images whatever the table's size."""
    if workers <= 1:
        yield from map(check_one, todo)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="verify") as pool:
        pending: set = set()
        for entry in todo:
            if len(pending) >= 2 * workers:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                yield from (f.result() for f in done)
            pending.add(pool.submit(check_one, entry))
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            yield from (f.result() for f in done)


class Progress:
    """"verified 12000/80000 images, 3 problems, 850 img/s" every `every` seconds, and once at
    the end, to `say`; nothing when `say` is None."""

    def __init__(self, total: int, say: Callable[[str], None] | None, every: float | None = None):
        self.total, self.say = total, say
        self.every = every if every is not None else (interval_from_env() if say else 0.0)
        self.done = 0
        self.started = self.last = time.monotonic()
        self.said = -1

    def step(self, image: bool, problems: int) -> None:
        self.done += image
        if self.say and time.monotonic() - self.last >= self.every:
            self._line(problems)

    def close(self, problems: int) -> None:
        if self.say and self.said != self.done:
            self._line(problems)

    def _line(self, problems: int) -> None:
        self.last = now = time.monotonic()
        rate = self.done / (now - self.started) if now > self.started else 0.0
        self.say(f"verified {self.done}/{self.total} images, {problems} problems, {rate:.0f} img/s")
        self.said = self.done
