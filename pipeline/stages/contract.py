"""The stage contract: the columns a record carries between the stages the runner places on
actors and between their phases, declared here and nowhere else, and what every stage shares
(the worker's name, per-candidate timing, a unit that failed whole).

A record enters as a work record (plan/work.py: the plan, its outcome so far, PRIOR). The
outcome columns (schema.OUTCOME_FIELDS) fill in along the way; the columns below are the ones a
stage adds beyond them. `CandidateStage` (stages/candidate.py) returns STAGE_OUT_SCHEMA records
(candidate fields, the CLIP EMBEDDING and, for images the writer may need, their PIXELS);
`WriteStage` (stages/write.py) returns WRITTEN_SCHEMA outcomes. Both are free of Ray, so they
run in-process in tests too.
"""

from __future__ import annotations

import os
import socket
import time
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa

from pipeline import __version__, faults
from pipeline.judge.outcome import fail
from pipeline.plan.work import CANDIDATE_FIELDS, PRIOR, unnest
from pipeline.spec import schema

# ── columns a stage adds to a record ───────────────────────────────────────
# In (plan/work.py): PRIOR — an earlier run judged it: ranked with the others, never measured again.
# CandidateStage, phase 3: a refinement's starting image (encoded bytes, read from the output);
# it stays on the actor (not in STAGE_OUT_SCHEMA).
CANVAS = "canvas"
# CandidateStage, phase 4: the normalised CLIP image embedding; committed beside the shard
# (`_embeddings/`), never in the results table.
EMBEDDING = schema.EMBEDDING_FIELD.name
# CandidateStage, phase 6: the raw RGB pixels (height × width × 3, uint8) of an image the
# writer may need (judge/files.py `ships_pixels`); the writer takes them off the record.
PIXELS = "pixels"
# WriteStage, phase 2: the rules this judging applied (the plan's `judge_key`), an outcome column.
JUDGED_WITH = "judged_with"

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


def failed_outcomes(batch: pa.Table, job: str, stage: str, message: str) -> pa.Table:
    """Work records → one `error` outcome per new candidate: a unit that could not be processed
    (an exception in a stage, its worker died on every retry) is recorded, never dropped, and a
    rerun retries it. Candidates judged in earlier runs keep their outcomes. `stage`
    (vocabulary.ERROR_STAGES) is the code that counts; `message` the runner's sentence."""
    records = [r for r in unnest(batch).to_pylist() if not r[PRIOR]]
    finished = datetime.now(UTC)
    for r in records:
        fail(r, stage, message, job=job, selected=False, rank=None, path=None, finished_at=finished)
    return pa.Table.from_pylist(records, schema=WRITTEN_SCHEMA)
