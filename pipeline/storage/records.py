"""Reading back what a run wrote, one way for every reader (resume, compaction, verify, report,
cost, decisions, the CLI), and writing its JSON.

- Parquet (results, shards, sidecars): only the columns asked for, from a local file by path
  (Arrow's own threaded reader) and from object storage by ranges (the footer, then the chunks
  of those columns: never the whole object); whole, or streamed in batches (`iter_parquet`).
- Run records (`_runs/<run_id>.json`): every one, or the latest by start time. A record that
  cannot be read (torn by hand, not JSON) is skipped, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import posixpath
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.storage import layout, tables
from pipeline.storage.store import Output, as_output


def read_parquet(output: Output | Path | str, rel: str, columns: list[str] | None = None) -> pa.Table:
    """The Parquet file `rel` of an output: the `columns` it has (all when None)."""
    out = as_output(output)
    if out.local:
        return tables.read(out.where(rel), columns)
    with out.open(rel) as f:
        return tables.read(f, columns)


@contextlib.contextmanager
def _source(out: Output, rel: str):
    """What `tables` reads `rel` from: a local path, or the object opened for ranged reads."""
    if out.local:
        yield out.where(rel)
    else:
        with out.open(rel) as f:
            yield f


def iter_parquet(output: Output | Path | str, rel: str, columns: list[str] | None,
                 rows: int = tables.BATCH_ROWS) -> Iterator[pa.RecordBatch]:
    """The Parquet file `rel` of an output, at most `rows` at a time: the `columns` it has (all
    when None)."""
    with _source(as_output(output), rel) as source:
        yield from tables.batches(source, columns, rows)


def count_valid(output: Output | Path | str, rel: str, columns: list[str]) -> int:
    """How many values (not nulls) the `columns` of `rel` hold: from its footer, or, where its
    writer kept no statistics, by streaming those columns."""
    with _source(as_output(output), rel) as source:
        counted = tables.valid_count(source, columns)
    if counted is None:
        counted = sum(len(b) - b.column(i).null_count for b in iter_parquet(output, rel, columns)
                      for i in range(b.num_columns))
    return counted


def read_results(output: Output | Path | str, columns: list[str] | None = None) -> pa.Table:
    """`results.parquet`: the `columns` it has (all when None)."""
    return read_parquet(output, layout.RESULTS, columns)


def results_names(output: Output | Path | str) -> list[str]:
    """The column names of `results.parquet` (its footer only)."""
    out = as_output(output)
    with out.open(layout.RESULTS) as f, pq.ParquetFile(f) as parquet:
        return parquet.schema_arrow.names


def iter_results(output: Output | Path | str, rows: int = 100_000) -> Iterator[pa.Table]:
    """`results.parquet`, every column, at most `rows` rows at a time: a reader of any size holds one batch."""
    for batch in iter_parquet(output, layout.RESULTS, None, rows):
        yield pa.Table.from_batches([batch])


def write_json(obj: dict, output: Output | Path | str, rel: str) -> None:
    as_output(output).put(rel, (json.dumps(obj, indent=2, default=str) + "\n").encode())


@dataclass(frozen=True)
class RunRecord:
    """One run's record (written by `pipeline.run.record.write`): where it is and what it says."""

    rel: str
    record: dict

    @property
    def name(self) -> str:
        return posixpath.basename(self.rel)

    @property
    def run_id(self) -> str:
        return self.record.get("run_id") or posixpath.splitext(self.name)[0]

    @property
    def started_at(self) -> str:
        return str(self.record.get("started_at", ""))


def run_records(output: Output | Path | str) -> list[RunRecord]:
    """Every readable run record of an output, in name order."""
    out = as_output(output)
    found = []
    for rel in sorted(out.files(layout.RUNS)):
        if not layout.is_run_record(rel):
            continue
        try:
            record = json.loads(out.get(rel))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict):
            found.append(RunRecord(rel, record))
    return found


def latest_run(output: Output | Path | str, other_than: str | None = None) -> RunRecord | None:
    """The record of the latest run (by its start time), leaving out the run `other_than`; None
    when there is none."""
    runs = [r for r in run_records(output) if other_than is None or r.record.get("run_id") != other_than]
    return max(runs, key=lambda r: r.started_at) if runs else None
