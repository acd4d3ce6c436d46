"""A reviewer's decisions: read a decisions file, check it against the results it was made on,
and keep the ones in force in the output (`_decisions/`), where every later run reads them.

A decision is a rule of the judgement, not an edit of the results: the plan carries each
candidate's decision (and makes a refinement's candidate, or a new round of candidates for a
row a reviewer emptied), its `judge_key` changes, so the row is judged again (`judge.py`)
and only what the decision needs is generated. Applying the same file twice records nothing
the second time, so it changes nothing.
"""

from __future__ import annotations

import io
import json
import math
import posixpath
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cached_property

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.errors import MAX_REPORTED, ManifestError, Problem, refusal, show
from pipeline.judge.select import passed
from pipeline.spec import schema
from pipeline.storage import tables, uris
from pipeline.storage.store import Output

DECISIONS = "_decisions"
COLUMNS = ("item_id", "decision", "note", "prompt", "strength")
# What the output keeps of each decision: the file's columns, the manifest row it is about,
# when it was applied, and whether it asked for a new round of candidates (a reject that left
# its row no passed candidate to take the place).
STORED_SCHEMA = pa.schema([
    pa.field("item_id", pa.string()), pa.field("id", pa.string()), pa.field("decision", pa.string()),
    pa.field("note", pa.string()), pa.field("prompt", pa.string()), pa.field("strength", pa.float64()),
    pa.field("decided_at", pa.timestamp("ms", tz="UTC")), pa.field("new_round", pa.bool_()),
])
# What makes two decisions the same (applying one again is a no-op).
_SAME = ("decision", "note", "prompt", "strength")
_RESULTS_COLUMNS = ["item_id", "id", "keep", "status", "reason", "path", "steps", "moderation", "parent"]


def read_file(uri: str) -> list[dict]:
    """The records of a decisions file (CSV, JSON or Parquet, by its extension), as they are."""
    ext = posixpath.splitext(uri.split("?")[0])[1].lower()
    try:
        data = uris.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 — missing, a device or pipe, too large, out of reach: named alike
        raise ManifestError([Problem(uri, refusal(e, uri, "decisions file", "file"))]) from None
    try:
        if ext == ".csv":
            import pyarrow.csv as pcsv

            names = pcsv.read_csv(io.BytesIO(data)).column_names
            table = pcsv.read_csv(io.BytesIO(data), convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False))
            return table.to_pylist()
        if ext == ".json":
            loaded = json.loads(data)
            records = loaded.get("decisions") if isinstance(loaded, dict) else loaded
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("expected a list of objects (item_id, decision, note, prompt, strength)")
            return records
        if ext == ".parquet":
            return tables.read(data).to_pylist()
    except (ValueError, pa.ArrowException) as e:
        raise ManifestError([Problem(uri, f"cannot read decisions: {e}")]) from None
    except RecursionError:
        raise ManifestError([Problem(uri, "cannot read decisions: nested too deep")]) from None
    raise ManifestError([Problem(uri, "decisions file must be .csv, .json or .parquet, "
                                      f"not {ext or 'no extension'!r}")])


def _text(value) -> str | None:
    """A cell as text: blanks (the page exports "" for 'none') are null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _strength(value) -> float | None:
    """A refine's strength as a file gives it (a number, or text as CSV gives it), None when it
    gives none (null, blank); ValueError unless it is a number the job spec's own rule for a
    strength admits (LIMITS["strength"]): NaN, infinities, 0 and anything past 1 are refused,
    whichever format the file is."""
    from pipeline.spec.config import LIMITS

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError("a strength is a number, not true/false")
    try:
        number = float(value)
    except (TypeError, OverflowError) as e:
        raise ValueError(str(e)) from None
    if not LIMITS["strength"].allows(number):
        raise ValueError(f"outside {LIMITS['strength']}")
    return number


def parse(records: list[dict], uri: str) -> tuple[list[dict], list[Problem]]:
    """Records → decisions (item_id, decision, note, prompt, strength), and a problem naming the
    row, the column and the value of every bad one."""
    problems: list[Problem] = []
    if records and (missing := [c for c in ("item_id", "decision") if c not in records[0]]):
        raise ManifestError([Problem(uri, f"missing column(s) {', '.join(map(repr, missing))} "
                                          f"(a decisions file has {', '.join(COLUMNS)})")])
    parsed: dict[str, tuple[int, dict]] = {}
    for i, rec in enumerate(records):
        item, decision = _text(rec.get("item_id")), (_text(rec.get("decision")) or "").lower()
        d = {"item_id": item, "decision": decision, "note": _text(rec.get("note")),
             "prompt": _text(rec.get("prompt")), "strength": None}
        if item is None:
            problems.append(Problem(uri, "empty item_id", row=i, column="item_id"))
            continue
        if decision not in schema.DECISIONS:
            problems.append(Problem(uri, f"{rec.get('decision')!r} is not a decision (one of "
                                         f"{', '.join(schema.DECISIONS)})", row=i, id=item, column="decision"))
            continue
        if decision == schema.REFINE:
            try:
                d["strength"] = _strength(rec.get("strength"))
            except ValueError:
                from pipeline.spec.config import LIMITS

                given = show(str(rec.get("strength")).strip())
                problems.append(Problem(uri, f"strength {given} is not a number {LIMITS['strength']}", row=i,
                                        id=item, column="strength"))
                continue
        if decision != schema.REFINE:
            d["prompt"] = None  # a prompt change or a strength only mean something to a refine
        if item in parsed and {k: parsed[item][1][k] for k in _SAME} != {k: d[k] for k in _SAME}:
            problems.append(Problem(uri, f"item {item} is decided twice, differently (first in row "
                                         f"{parsed[item][0]})", row=i, id=item, column="item_id"))
            continue
        parsed[item] = (i, d)
    return [d | {"_row": i} for i, d in parsed.values()], problems


def _parts(out: Output) -> list[str]:
    """The recorded parts, in the order they were recorded (their names sort so)."""
    return sorted(p for p in out.files(DECISIONS) if posixpath.basename(p).startswith("part-"))


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

    @staticmethod
    def _last(of: pa.Table) -> pa.Table:
        """The last row of each item id of `of` (rows of the history, in order)."""
        order = pa.array(range(of.num_rows), pa.int64())
        last = of.append_column("__order", order).group_by("item_id").aggregate([("__order", "max")])
        return of.take(pa.array(sorted(last["__order_max"].to_pylist()), pa.int64()))

    @cached_property
    def latest(self) -> pa.Table:
        return self._last(self.history)

    @cached_property
    def in_force(self) -> pa.Table:
        latest = self.latest
        judged = self._last(self.history.filter(pc.not_equal(self.history["decision"], schema.REFINE)))
        approved = judged.filter(pc.equal(judged["decision"], schema.APPROVE))["item_id"]
        refined_after_approval = pc.and_(pc.equal(latest["decision"], schema.REFINE),
                                         pc.is_in(latest["item_id"], approved))
        if not pc.any(refined_after_approval).as_py():
            return latest
        standing = judged.filter(pc.is_in(judged["item_id"], latest["item_id"].filter(refined_after_approval)))
        return pa.concat_tables([latest.filter(pc.invert(refined_after_approval)), standing])

    @cached_property
    def rounds(self) -> dict[str, int]:
        rounds: dict[str, int] = {}
        for row_id in self.history.filter(pc.fill_null(self.history["new_round"], False))["id"].to_pylist():
            rounds[row_id] = rounds.get(row_id, 0) + 1
        return rounds

    @cached_property
    def refines(self) -> pa.Table:
        import polars as pl

        asked = pl.from_arrow(self.history.filter(pc.equal(self.history["decision"], schema.REFINE)).select(
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
    return Decisions(pa.concat_tables([tables.read(out.get(p)).cast(STORED_SCHEMA) for p in paths]))


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
    from pipeline.run.results import RESULTS, read_results

    problems = list(problems or [])
    if not decisions and not problems:
        return STORED_SCHEMA.empty_table()
    if not out.exists(RESULTS):
        raise ManifestError([Problem(uri, f"{out.where(RESULTS)}: no results to apply decisions to "
                                          "(run the job first, then review its report)")])
    results = read_results(out, _RESULTS_COLUMNS)
    wanted = pa.array([d["item_id"] for d in decisions], pa.string())
    found = results.filter(pc.is_in(results["item_id"], wanted))
    by_item = {r["item_id"]: r for r in found.to_pylist()}
    problems += [p for d in decisions if (p := _problem(d, by_item.get(d["item_id"]), uri, refine_strength))]
    if problems:
        problems.sort(key=lambda p: p.row if p.row is not None else -1)
        raise ManifestError(problems[:MAX_REPORTED], len(problems))
    current = {r["item_id"]: r for r in latest.to_pylist()}
    changed = [d for d in decisions
               if d["item_id"] not in current or any(current[d["item_id"]][k] != d[k] for k in _SAME)]
    now = datetime.now(UTC)
    for d in changed:
        d.update(id=by_item[d["item_id"]]["id"], decided_at=now, new_round=False)
    _ask_new_rounds(changed, results, current)
    return pa.Table.from_pylist(changed, schema=STORED_SCHEMA)


def _problem(d: dict, result: dict | None, uri: str, refine_strength: float) -> Problem | None:
    """Why a decision cannot apply to its candidate, or None."""
    where = {"row": d["_row"], "id": d["item_id"]}
    if result is None:
        return Problem(uri, "no such candidate in the results (decisions apply to the output they were "
                            "made on)", column="item_id", **where)
    status, reason = result["status"], result["reason"] or ""
    if d["decision"] in (schema.APPROVE, schema.REFINE) and result["moderation"] == "block":
        # whatever its reason says now (a reviewer's reject may have replaced it)
        return Problem(uri, f"cannot {d['decision']} a candidate moderation blocked", column="decision", **where)
    if d["decision"] == schema.APPROVE and status in (None, schema.ERROR):
        return Problem(uri, f"nothing to approve: the candidate is {status or 'pending'}"
                            + (f" ({reason})" if reason else ""), column="decision", **where)
    if d["decision"] == schema.REFINE:
        if not result["path"]:
            return Problem(uri, f"no image to refine (status {status or 'pending'}"
                                + (f", {reason}" if reason else "") + ")", column="decision", **where)
        strength = d["strength"] if d["strength"] is not None else refine_strength
        if math.floor(result["steps"] * strength) < 1:
            given = "" if d["strength"] is not None else " ([generate].refine_strength)"
            return Problem(uri, f"strength {strength:g}{given} × steps {result['steps']} gives no denoising "
                                f"step (give a strength of at least {1 / result['steps']:g})", column="strength",
                           **where)
    return None


def _ask_new_rounds(changed: list[dict], results: pa.Table, current: dict[str, dict]) -> None:
    """A reject (a new one: a changed note asks for nothing) that leaves its row fewer candidates
    able to take a place than it keeps asks for a new round of candidates (fresh derived seeds):
    flagged on the row's first reject."""
    rejects = [d for d in changed
               if d["decision"] == schema.REJECT and current.get(d["item_id"], {}).get("decision") != schema.REJECT]
    if not rejects:
        return
    after = {k: v["decision"] for k, v in current.items()} | {d["item_id"]: d["decision"] for d in changed}
    rows = results.filter(pc.is_in(results["id"], pa.array({d["id"] for d in rejects}, pa.string()))).to_pylist()
    children: dict[str, list[dict]] = {}
    for r in rows:
        children.setdefault(r["parent"], []).append(r)

    def able(r: dict) -> bool:
        """The selection's own rule, on the candidate as it was judged, under the decisions to come."""
        if r["reason"] == schema.REVIEWER_REFINED:  # its place comes back unless a refinement keeps it
            if any(able(child) for child in children.get(r["item_id"], [])):
                return False
            r = {**r, "reason": schema.NOT_SELECTED}
        return passed({**r, "prior": r["status"] is not None, "decision": after.get(r["item_id"])})

    count: dict[str, int] = {}
    keep: dict[str, int] = {}
    for r in rows:
        keep[r["id"]] = r["keep"]
        count[r["id"]] = count.get(r["id"], 0) + able(r)
    for d in changed:
        if d["decision"] == schema.REFINE:  # each makes one, to come
            count[d["id"]] = count.get(d["id"], 0) + 1
    flagged: set[str] = set()
    for d in rejects:
        if d["id"] not in flagged and count.get(d["id"], 0) < keep[d["id"]]:
            d["new_round"] = True
            flagged.add(d["id"])


def record(out: Output, changed: pa.Table) -> None:
    """Keep the changed decisions in the output: the next runs apply them too."""
    if changed.num_rows:
        name = f"part-{len(_parts(out)):06d}-{uuid.uuid4().hex[:8]}.parquet"
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
