"""Item-id ranges: how the committed outcomes of an output are cut into parts of bounded size.

An item id is a hex digest, so its first `k` hex digits cut the ids into 16**k ranges of
about equal size. A range is named by that prefix ("" is everything, "a", "a3", "a3f"). The
same prefix names the images of the range (`images/<ab>/<item_id>.<ext>`: its first two
digits are the folder), so resume checks the files of one range by listing only its own
folders, and every driver phase holds one range at a time: its peak is set by the range's size,
never by the run's.

Why ranges of the item id and not of the manifest row: a nightly catalogue gains and loses
rows, so a row's number changes between runs while its item ids do not.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Outcomes a range holds at most, roughly (about 0.5 kB each in memory, a few times that
# while a range is merged): a range's peak, whatever the run's size.
RANGE_OUTCOMES = 250_000
MAX_DIGITS = 3  # 4,096 ranges: up to about a billion outcomes at RANGE_OUTCOMES


def digits_for(outcomes: int, per_range: int | None = None) -> int:
    """How many leading hex digits name a range, so that `outcomes` spread over the ranges leave
    at most about `per_range` (RANGE_OUTCOMES) in each."""
    per_range = per_range or RANGE_OUTCOMES
    k = 0
    while k < MAX_DIGITS and outcomes > per_range * 16**k:
        k += 1
    return k


def prefixes(digits: int) -> list[str]:
    """Every range's prefix at `digits` hex digits, in id order."""
    return [format(i, f"0{digits}x") for i in range(16**digits)] if digits else [""]


def range_numbers(item_ids: pa.Array | pa.ChunkedArray, digits: int) -> np.ndarray:
    """The range (an index into `prefixes(digits)`) of each item id."""
    import polars as pl

    if not digits or not len(item_ids):
        return np.zeros(len(item_ids), np.int64)
    return pl.Series(item_ids).str.slice(0, digits).str.to_integer(base=16).to_numpy().astype(np.int64)


def by_range(table: pa.Table, numbers: np.ndarray) -> Iterator[tuple[int, pa.Table]]:
    """`table`'s rows grouped by `numbers` (each row's range, or any other key), in key order,
    each group in the rows' order: one stable sort and a slice a group. A filter a key would
    scan the whole table once for each of up to 16**digits keys: at 256 ranges, reading the
    shards of a 2M-candidate output took minutes and held every one-row piece in memory."""
    if not len(numbers):
        return
    if (np.diff(numbers) < 0).any():
        order = np.argsort(numbers, kind="stable")
        table, numbers = table.take(pa.array(order)), numbers[order]
    cuts = np.flatnonzero(np.diff(numbers)) + 1
    for start, stop in zip(np.concatenate([[0], cuts]), np.concatenate([cuts, [len(numbers)]]), strict=True):
        yield int(numbers[start]), table.slice(int(start), int(stop - start))


def overlaps(prefix: str, other: str) -> bool:
    """Whether two ranges share ids: one's prefix starts the other's."""
    return prefix.startswith(other) or other.startswith(prefix)


def within(item_ids: pa.Array | pa.ChunkedArray, prefix: str) -> pa.Array:
    """Which item ids fall in the range `prefix`."""
    return pc.starts_with(item_ids, prefix)


def listing_start(prefix: str) -> str:
    """Where a range's images begin below `images/` (or `_previews/`): the folders named by
    their first two digits ("a" → every folder a0..af), within one folder when finer ("a3f" →
    "a3/a3f"), so one listing by key prefix finds them all."""
    return f"{prefix[:2]}/{prefix}" if len(prefix) > 2 else prefix
