"""Problems in the user's tables and how vectorised checks find them.

A `Problem` (pipeline/errors.py) names the file, the row, the id, the column and the value; a
`ManifestError` holds every problem found (the first `MAX_REPORTED`, and their count), never only
the first. A `Check` is one rule over a polars frame: a million bad rows cost one filter, and only
the reported rows' values are read.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import polars as pl

from pipeline.errors import MAX_REPORTED, ManifestError, Problem, show
from pipeline.spec.limits import LIMITS


@dataclass(frozen=True)
class Check:
    """One vectorised rule: the rows where `bad` holds break it. `message` says how: a rule
    ('steps must be 1..1000') to which ', got <value>' is added, or a callable over the value
    for wording of its own. `value` is what the message quotes (default: the column)."""

    bad: pl.Expr
    column: str
    message: str | Callable[[Any], str]
    value: pl.Expr | None = None

    def explain(self, value: Any) -> str:
        if callable(self.message):
            return self.message(value)
        return self.message if value is None else f"{self.message}, got {show(value)}"


def collect(df: pl.DataFrame, checks: list[Check], uri: str, id_col: str = "id") -> tuple[list[Problem], int]:
    """Every check over the frame: (first problems, total count)."""
    found: list[Problem] = []
    total = 0
    for check in checks:
        first, n = row_problems(df, check, uri, id_col)
        found += first
        total += n
    return found, total


def row_problems(df: pl.DataFrame, check: Check, uri: str, id_col: str = "id") -> tuple[list[Problem], int]:
    """Problems for the rows that break `check`; returns (first few, total count). Only the
    reported rows' values are read, so a million bad rows cost one filter."""
    hit = df.filter(check.bad)
    first = hit.head(MAX_REPORTED).select(
        "__row",
        (pl.col(id_col) if id_col in hit.columns else pl.lit(None)).alias("__id"),
        (pl.col(check.column) if check.value is None else check.value).alias("__value"))
    return [Problem(uri, check.explain(v), row=int(r), id=i, column=check.column)
            for r, i, v in first.iter_rows()], len(hit)


def limit_checks(*pairs: tuple[str, str]) -> list[Check]:
    """(column, LIMITS key) → a check each (the job spec's table: one rule for both); a null
    falls back to the style or the job."""
    return [Check(pl.col(column).is_not_null() & ~LIMITS[limit].holds(pl.col(column)), column,
                  f"{column} must be {LIMITS[limit]}") for column, limit in pairs]


class Problems:
    """Problems found a part at a time (a chunk of a long manifest): the first `MAX_REPORTED` by
    row kept, every one counted, so a catalogue with a million bad rows costs a list of fifty."""

    def __init__(self) -> None:
        self.kept: list[Problem] = []
        self.total = 0

    def add(self, found: list[Problem], count: int) -> None:
        self.kept = sorted([*self.kept, *found], key=lambda p: p.row if p.row is not None else -1)[:MAX_REPORTED]
        self.total += count

    def raise_any(self) -> None:
        """ManifestError naming the problems, when there are any."""
        if self.total:
            raise ManifestError(self.kept, self.total)
