"""Resume: what of the plan is left to do, given what earlier runs committed.

An item id's latest committed outcome counts while the file it lists exists; errors rerun. A
manifest row with any candidate left (or judged under other rules than today's) is judged
again whole, so its work carries the earlier judged candidates beside its pending ones.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.plan.build import PlanFile
from pipeline.plan.work import candidates
from pipeline.run.shards import Committed
from pipeline.spec import schema


@dataclass(frozen=True)
class ToDo:
    """How much of a plan is left: candidates with no finished outcome, rows to judge."""

    candidates: int
    rows: int


def to_do(plan: PlanFile, committed: Committed) -> ToDo:
    """How many candidates have no finished outcome, and how many manifest rows need work."""
    candidates_to_go = rows_to_go = 0
    for chunk in plan.chunks(["item_id", "id", "judge_key"]):
        done, rows = _split(chunk, committed)
        candidates_to_go += len(done) - pc.sum(pc.cast(done, pa.int64())).as_py() if len(done) else 0
        rows_to_go += len(rows)
    return ToDo(candidates_to_go, rows_to_go)


def work(plan: PlanFile, committed: Committed) -> Iterator[pa.Table]:
    """The rows of each plan chunk that need work: their pending candidates with the earlier
    judged ones, so each row is judged across attempts (and under today's rules)."""
    for chunk in plan.chunks():
        done, rows = _split(chunk, committed)
        if len(rows):
            yield candidates(chunk.filter(pc.invert(done)), _priors(chunk, committed, done, rows))


def _split(chunk: pa.Table, committed: Committed) -> tuple[pa.Array, pa.Array]:
    """Of a plan chunk: which candidates are done, and the ids of the rows that need work (a
    candidate not done, or one judged under other rules: the row is judged again)."""
    done, other_rules = committed.judged(chunk)
    return done, pc.unique(chunk["id"].filter(pc.or_(pc.invert(done), other_rules)))


def _priors(chunk: pa.Table, committed: Committed, done: pa.Array, pending_rows: pa.Array) -> pa.Table | None:
    """Candidates of a plan chunk judged in earlier runs, of the rows that have pending ones:
    plan columns and their committed outcome, so the row is judged across attempts."""
    judged = chunk.filter(pc.and_(done, pc.is_in(chunk["id"], pending_rows)))
    if not judged.num_rows:
        return None
    outcome = committed.outcome_of(judged)
    table = judged.select([f.name for f in schema.PLAN_FIELDS])
    for name in ("path", "truncated", "scheduler"):
        table = table.set_column(table.schema.get_field_index(name), name, outcome[name])
    for f in schema.OUTCOME_FIELDS:
        table = table.append_column(f, outcome[f.name])
    return table
