"""A reviewer's decisions kept in the output (`_decisions/`), where every later run reads them:
a decisions file (review/decision_file.py) checked against the results it was made on, what
it changes recorded, and the decisions in force read back.

A decision is a rule of the judgement, not an edit of the results: the plan carries each
candidate's decision (and makes a refinement's candidate, or a new round of candidates for a
row a reviewer emptied), its `judge_key` changes, so the row is judged again (judge/) and
only what the decision needs is generated. What a decision may do and when it asks for a new
round are judge/review.py's and judge/rounds.py's. Applying the same file twice records
nothing the second time, so it changes nothing.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import MAX_REPORTED, ManifestError, Problem
from pipeline.judge.outcome import with_reason_codes
from pipeline.judge.review import in_force, last_per_item, why_not
from pipeline.judge.rounds import ask_new_rounds, new_rejects
from pipeline.review.decision_file import SAME, parse, read_file
from pipeline.spec import vocabulary
from pipeline.storage import tables
from pipeline.storage.layout import DECISIONS, RESULTS, is_part, part_name
from pipeline.storage.records import read_parquet, read_results
from pipeline.storage.store import Output

# What the output keeps of each decision: the file's columns, the manifest row it is about,
# when it was applied, and whether it asked for a new round of candidates (a reject that left
# its row no passed candidate to take the place).
STORED_SCHEMA = pa.schema([
    pa.field("item_id", pa.string()), pa.field("id", pa.string()), pa.field("decision", pa.string()),
    pa.field("note", pa.string()), pa.field("prompt", pa.string()), pa.field("strength", pa.float64()),
    pa.field("decided_at", pa.timestamp("ms", tz="UTC")), pa.field("new_round", pa.bool_()),
])
_RESULTS_COLUMNS = ["item_id", "id", "keep", "status", "reason", "reason_code", "path", "steps", "moderation",
                    "parent", "variant", "logo", "headline", "clean_path"]


def _parts(out: Output) -> list[str]:
    """The recorded parts, in the order they were recorded (their names sort so)."""
    return sorted(p for p in out.files(DECISIONS) if is_part(p))


@dataclass(frozen=True)
class Decisions:
    """What reviewers decided on an output, from every decision recorded (`history`, in the
    order recorded):

    - `latest`: the latest decision recorded for each decided item (what a file is compared with:
      the same decision again records nothing);
    - `in_force`: the decision each decided item is judged by: its latest, except that a refine
      after an approval leaves the approval standing (the refinement is made; the approved image
      stays locked until a reviewer rejects it);
    - `rounds`: per manifest row id, the new rounds of candidates rejects asked for;
    - `refines`: every refinement asked for (item, prompt, strength; first asked at).

    Rounds and refinements are made once asked, whatever is decided later: what was generated
    stays planned, in the results and the report, and a later decision is about it."""

    history: pa.Table  # STORED_SCHEMA

    @classmethod
    def none(cls) -> Decisions:
        return cls(STORED_SCHEMA.empty_table())

    @cached_property
    def latest(self) -> pa.Table:
        return last_per_item(self.history)

    @cached_property
    def in_force(self) -> pa.Table:
        return in_force(self.history)

    @cached_property
    def rounds(self) -> dict[str, int]:
        rounds: dict[str, int] = {}
        for row_id in self.history.filter(pc.fill_null(self.history["new_round"], False))["id"].to_pylist():
            rounds[row_id] = rounds.get(row_id, 0) + 1
        return rounds

    @cached_property
    def refines(self) -> pa.Table:
        import polars as pl

        asked = pl.from_arrow(self.history.filter(pc.equal(self.history["decision"], vocabulary.REFINE)).select(
            ["item_id", "prompt", "strength", "decided_at"]))
        return asked.group_by(["item_id", "prompt", "strength"], maintain_order=True).agg(
            pl.col("decided_at").min()).to_arrow()

    def then(self, changed: pa.Table) -> Decisions:
        """These decisions once `changed` (recorded after them) applies too."""
        return Decisions(pa.concat_tables([self.history, changed])) if changed.num_rows else self


def load(out: Output) -> Decisions:
    """The decisions recorded in an output (none when it has none)."""
    paths = _parts(out)
    if not paths:
        return Decisions.none()
    return Decisions(pa.concat_tables([read_parquet(out, p).cast(STORED_SCHEMA) for p in paths]))


def read(uri: str, out: Output, latest: pa.Table, refine_strength: float) -> pa.Table:
    """The decisions of a file that change something (STORED_SCHEMA), checked against the results
    they were made on (`results.parquet` of `out`), or ManifestError naming every bad row.
    `refine_strength`: a refine's strength when it gives none ([generate].refine_strength)."""
    decisions, problems = parse(read_file(uri), uri)
    return check(decisions, uri, out, latest, refine_strength, problems)


def check(decisions: list[dict], uri: str, out: Output, latest: pa.Table, refine_strength: float,
          problems: list[Problem] | None = None) -> pa.Table:
    """The `decisions` that change something against the `latest` recorded (STORED_SCHEMA), or
    ManifestError naming every bad row (with the `problems` found before)."""
    problems = list(problems or [])
    if not decisions and not problems:
        return STORED_SCHEMA.empty_table()
    if not out.exists(RESULTS):
        raise ManifestError([Problem(uri, f"{out.where(RESULTS)}: no results to apply decisions to "
                                          "(run the job first, then review its report)")])
    results = with_reason_codes(read_results(out, _RESULTS_COLUMNS))
    wanted = pa.array([d["item_id"] for d in decisions], pa.string())
    found = results.filter(pc.is_in(results["item_id"], wanted))
    by_item = {r["item_id"]: r for r in found.to_pylist()}
    problems += [p for d in decisions if (p := _problem(d, by_item.get(d["item_id"]), uri, refine_strength))]
    if problems:
        problems.sort(key=lambda p: p.row if p.row is not None else -1)
        raise ManifestError(problems[:MAX_REPORTED], len(problems))
    current = {r["item_id"]: r for r in latest.to_pylist()}
    changed = [d for d in decisions
               if d["item_id"] not in current or any(current[d["item_id"]][k] != d[k] for k in SAME)]
    now = datetime.now(UTC)
    for d in changed:
        d.update(id=by_item[d["item_id"]]["id"], decided_at=now, new_round=False)
    if rejects := new_rejects(changed, current):
        rows = results.filter(pc.is_in(results["id"], pa.array({d["id"] for d in rejects}, pa.string())))
        ask_new_rounds(changed, rows.to_pylist(), current)
    return pa.Table.from_pylist(changed, schema=STORED_SCHEMA)


def _problem(d: dict, result: dict | None, uri: str, refine_strength: float) -> Problem | None:
    """Why a decision cannot apply to its candidate (judge/review.py's rules), or None."""
    where = {"row": d["_row"], "id": d["item_id"]}
    if result is None:
        return Problem(uri, "no such candidate in the results (decisions apply to the output they were "
                            "made on)", column="item_id", **where)
    if wrong := why_not(d["decision"], result, d["strength"], refine_strength):
        column, message = wrong
        return Problem(uri, message, column=column, **where)
    return None


def record(out: Output, changed: pa.Table) -> None:
    """Keep the changed decisions in the output: the next runs apply them too."""
    if changed.num_rows:
        name = part_name(len(_parts(out)), uuid.uuid4().hex[:8])
        out.put(f"{DECISIONS}/{name}", tables.to_bytes(changed))


def unplanned(decisions: Decisions, plan_item_ids: Iterable[pa.Array], row_ids: set[str]) -> pa.Table:
    """The decisions in force, on rows being planned (`row_ids`), whose candidate the plan no
    longer has (its prompt, settings or inputs changed since): they no longer apply."""
    decided = decisions.in_force.filter(pc.is_in(decisions.in_force["id"], pa.array(sorted(row_ids), pa.string())))
    if not decided.num_rows:
        return decided
    found: list[str] = []
    for ids in plan_item_ids:
        found += pc.filter(ids, pc.is_in(ids, decided["item_id"])).to_pylist()
    return decided.filter(pc.invert(pc.is_in(decided["item_id"], pa.array(found, pa.string()))))
