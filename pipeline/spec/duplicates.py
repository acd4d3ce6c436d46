"""Duplicate manifest ids, found without holding the manifest's ids.

A catalogue of ten million rows has ten million ids; a set of them is a gigabyte of Python
objects. So each chunk's ids (with their row numbers) go to a spill file on the driver's disk,
cut by a hash of the id into buckets of about `BUCKET_ROWS`: every copy of an id lands in the
same bucket, and a bucket at a time, in row order, names each row whose id an earlier row has.
"""

from __future__ import annotations

import secrets

import polars as pl
import pyarrow as pa

from pipeline.errors import MAX_REPORTED, Problem, show
from pipeline.spec.checks import Problems
from pipeline.storage.scratch import Scratch
from pipeline.storage.spill import Spill, split

BUCKET_ROWS = 1_000_000  # ids a bucket holds, about: 40-ish bytes each while it is checked
_SCHEMA = pa.schema([("__row", pa.int64()), ("id", pa.large_string())])


class DuplicateIds:
    """Add every chunk's ids in row order, then `problems()`; `close()` removes the spill."""

    def __init__(self, uri: str, rows: int):
        self.uri = uri
        self.buckets = max(1, -(-rows // BUCKET_ROWS))
        # a temp folder marked live (a killed validation's is removed by the next run: `scratch`)
        self._scratch = Scratch(f"ids-{secrets.token_hex(6)}")
        self._spill = Spill(self._scratch.path / "ids.arrow", _SCHEMA, compressed=False)

    def add(self, df: pl.DataFrame) -> None:
        """A chunk's rows (`__row`, `id`); null ids are an empty id's problem, not a duplicate."""
        ids = df.select(pl.col("__row").cast(pl.Int64), "id").filter(pl.col("id").is_not_null())
        buckets = (ids["id"].hash() % self.buckets).cast(pl.Int64).to_numpy()
        for bucket, part in split(ids.to_arrow().cast(_SCHEMA), buckets):
            self._spill.add(bucket, part)

    def problems(self) -> tuple[list[Problem], int]:
        """Each row whose id an earlier row has: (the first `MAX_REPORTED` by row, their count)."""
        found = Problems()
        for bucket in range(self.buckets):
            ids = pl.from_arrow(self._spill.read(bucket))  # written in row order, a chunk after another
            later = ids.filter(~pl.col("id").is_first_distinct())
            found.add([Problem(self.uri, f"duplicate id {show(i)} (an earlier row has it)", row=r, id=i, column="id")
                       for r, i in later.head(MAX_REPORTED).iter_rows()], len(later))
        return found.kept, found.total

    def close(self) -> None:
        self._spill.close()
        self._scratch.close()

    def __enter__(self) -> DuplicateIds:
        return self

    def __exit__(self, *_) -> None:
        self.close()
