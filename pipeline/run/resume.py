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

from pipeline.plan.work import candidates
from pipeline.run.joined import Joined
from pipeline.spec import schema, vocabulary

# The outcome columns `to_do` reads: a join of these alone counts what is left (Joined's columns).
COUNTED = ["status", "judged_with"]


@dataclass(frozen=True)
class ToDo:
    """How much of a plan is left: candidates with no finished outcome, rows to judge."""

    candidates: int
    rows: int


def to_do(joined: Joined) -> ToDo:
    """How many candidates have no finished outcome, and how many manifest rows need work (a
    join of COUNTED columns is enough)."""
    candidates_to_go = rows_to_go = 0
    for chunk, outcome in joined.chunks(["item_id", "id", "judge_key"]):
        done, rows = _split(chunk, outcome)
        candidates_to_go += len(done) - pc.sum(pc.cast(done, pa.int64())).as_py() if len(done) else 0
        rows_to_go += len(rows)
    return ToDo(candidates_to_go, rows_to_go)


def work(joined: Joined) -> Iterator[pa.Table]:
    """The rows of each plan chunk that need work: their pending candidates with the earlier
    judged ones, so each row is judged across attempts (and under today's rules)."""
    for chunk, outcome in joined.chunks():
        done, rows = _split(chunk, outcome)
        if len(rows):
            yield candidates(chunk.filter(pc.invert(done)), _priors(chunk, outcome, done, rows))


def judged(plan: pa.Table, outcome: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Which plan rows have a finished outcome (errors are not done: a rerun retries them),
    and which of those were judged under other rules than the plan's (`judge_key`)."""
    done = pc.fill_null(pc.not_equal(outcome["status"], vocabulary.ERROR), False)
    other_rules = pc.fill_null(pc.not_equal(outcome["judged_with"], plan["judge_key"]), True)
    return done, pc.and_(done, other_rules)


def _split(chunk: pa.Table, outcome: pa.Table) -> tuple[pa.Array, pa.Array]:
    """Of a plan chunk: which candidates are done, and the ids of the rows that need work (a
    candidate not done, or one judged under other rules: the row is judged again)."""
    done, other_rules = judged(chunk, outcome)
    return done, pc.unique(chunk["id"].filter(pc.or_(pc.invert(done), other_rules)))


def _priors(chunk: pa.Table, outcome: pa.Table, done: pa.Array, pending_rows: pa.Array) -> pa.Table | None:
    """Candidates of a plan chunk judged in earlier runs, of the rows that have pending ones:
    plan columns and their committed outcome, so the row is judged across attempts."""
    keep = pc.and_(done, pc.is_in(chunk["id"], pending_rows))
    judged_rows = chunk.filter(keep)
    if not judged_rows.num_rows:
        return None
    outcome = outcome.filter(keep)
    table = judged_rows.select([f.name for f in schema.PLAN_FIELDS])
    for name in ("path", "truncated", "scheduler"):
        table = table.set_column(table.schema.get_field_index(name), name, outcome[name])
    for f in schema.OUTCOME_FIELDS:
        table = table.append_column(f, outcome[f.name])
    return table
