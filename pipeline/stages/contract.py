"""The stage contract: what a record carries between the stages the runner places on actors,
and what every stage shares (the worker's name, per-candidate timing, a unit that failed whole).

`CandidateStage` (stages/candidate.py) returns STAGE_OUT_SCHEMA records (candidate fields, the
CLIP embedding and, for images to keep, their PIXELS); `WriteStage` (stages/write.py) returns
WRITTEN_SCHEMA outcomes. Both are free of Ray, so they run in-process in tests too.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline import __version__, faults
from pipeline.plan.work import CANDIDATE_FIELDS, PRIOR, unnest
from pipeline.spec import schema

PIXELS = "pixels"
EMBEDDING = schema.EMBEDDING_FIELD.name
STAGE_OUT_SCHEMA = pa.schema(CANDIDATE_FIELDS + [schema.EMBEDDING_FIELD, pa.field(PIXELS, pa.large_binary())])
WRITTEN_SCHEMA = pa.schema(CANDIDATE_FIELDS + [schema.EMBEDDING_FIELD])
SOFTWARE_AGENT = f"asset-pipeline {__version__}"


def worker_name() -> str:
    """The process a record was made in, as results name it (`worker`, `writer`)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def ms_each(t0: float, n: int) -> float:
    """Milliseconds since `t0`, shared by the `n` candidates of a batch."""
    return (time.perf_counter() - t0) * 1000 / max(n, 1)


def die_if_armed(records: list[dict], point: str = "actor.exit_once") -> None:
    """Test-only: the actor dies hard (see pipeline/faults.py), so Ray must restart it."""
    marker = faults.arg(point)
    if marker and not os.path.exists(marker):
        Path(marker).touch()
        os._exit(1)
    poison = faults.arg("actor.exit_on_seed")
    if poison and any(str(r["seed"]) == poison for r in records):
        os._exit(1)


def failed_outcomes(batch: pa.Table, job: str, reason: str) -> pa.Table:
    """Work records → one `error` outcome per new candidate: a unit that could not be processed
    (an exception in a stage, its worker died on every retry) is recorded, never dropped, and a
    rerun retries it. Candidates judged in earlier runs keep their outcomes."""
    records = [r for r in unnest(batch).to_pylist() if not r[PRIOR]]
    finished = datetime.now(UTC)
    for r in records:
        r.update(job=job, status=schema.ERROR, reason=reason, selected=False, rank=None, path=None,
                 finished_at=finished)
    return pa.Table.from_pylist(records, schema=WRITTEN_SCHEMA)
