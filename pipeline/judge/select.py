"""Best-k of N per row, by CLIP score, among every candidate of the row that passed the filters,
whichever run measured it: judging a row across attempts gives the same selection as judging
all its candidates at once.

Pure: works on candidate records (dicts). Two steps, because the second depends on writes:
- `rank`: the passed candidates of each row, best score first (ties → lower candidate index),
  after the ones a reviewer approved and the refinements a reviewer asked for: these are locked
  in, each takes a place even past `keep`; a refined candidate gives its place to its
  refinement once that passes;
- `fill_places`: walk that order and keep the first `keep` that are (or can be) written; a
  pick whose write fails is an error and the next one takes its place; the rest are
  `rejected / not_selected`, an earlier pick outranked now included (its file goes).

Before the writer, the model actor asks the same ranking which candidates `has_place` (an
earlier one promoted is generated again) and which are `in_reserve` (their pixels travel).

A record from an earlier run carries `prior = True` and its committed outcome: it is judged
with the others but never measured again.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable

from pipeline.judge.outcome import code_of, reject, written
from pipeline.judge.review import approvable
from pipeline.spec import vocabulary

# Past its places, a row ships the pixels of as many runners-up again: a pick whose write fails
# hands its place to the next, and the writer has its pixels at hand.
RESERVE_PER_PLACE = 1


def passed(r: dict) -> bool:
    """Passed every filter: a new candidate nothing rejected, or an earlier one that was kept or
    only outranked. A reviewer's approval passes it whatever the CLIP threshold says, never past
    moderation; a reviewer's reject takes it out."""
    status, decision = r.get("status"), r.get("decision")
    if decision == vocabulary.REJECT:
        return False
    if decision == vocabulary.APPROVE:
        return approvable(r)
    return status is None or (bool(r.get("prior")) and (
        status == vocabulary.WRITTEN or (status == vocabulary.REJECTED and code_of(r) == vocabulary.NOT_SELECTED)))


def by_row(records: Iterable[dict]) -> list[list[dict]]:
    rows: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        rows[r["id"]].append(r)
    return list(rows.values())


def locked(r: dict) -> bool:
    """A reviewer approved it, or asked for it (a refinement): while it passes, it keeps a place
    whatever else is in the row (even past `keep`)."""
    return r.get("decision") == vocabulary.APPROVE or r.get("parent") is not None


def has_place(r: dict, ranks: dict[str, int]) -> bool:
    """Ranked among the row's `keep` best, or locked in by a reviewer while it passes."""
    rank_ = ranks.get(r["item_id"])
    return rank_ is not None and (rank_ <= int(r["keep"]) or locked(r))


def in_reserve(r: dict, ranks: dict[str, int]) -> bool:
    """Has a place, or is among the runners-up next in line for one (`RESERVE_PER_PLACE` per
    place): the writer may need its pixels."""
    rank_ = ranks.get(r["item_id"])
    return rank_ is not None and (rank_ <= (1 + RESERVE_PER_PLACE) * int(r["keep"]) or locked(r))


def refined_away(cands: list[dict]) -> set[str]:
    """The candidates of a row a reviewer refined whose refinement passed: it takes their place.
    Until one passes (or when the reviewer rejects it), the refined candidate competes as before."""
    refined = {r["item_id"] for r in cands if r.get("decision") == vocabulary.REFINE}
    return {r["parent"] for r in cands if r.get("parent") in refined and passed(r)}


def _order(r: dict) -> tuple:
    """Approved first, then a reviewer's refinements, then by CLIP score (ties: the lower
    candidate index)."""
    tier = 0 if r.get("decision") == vocabulary.APPROVE else 1 if r.get("parent") is not None else 2
    return tier, -(r["clip_score"] if r["clip_score"] is not None else -1.0), r["candidate"]


def rank(records: list[dict]) -> dict[str, int]:
    """Item id → rank (1 = best) of the passed candidates of each row; the others have none."""
    ranks = {}
    for cands in by_row(records):
        away = refined_away(cands)
        ok = sorted((r for r in cands if passed(r) and r["item_id"] not in away), key=_order)
        ranks.update((r["item_id"], i) for i, r in enumerate(ok, start=1))
    return ranks


def fill_places(records: list[dict], write: Callable[[dict], bool], can_write: Callable[[dict], bool]) -> None:
    """Rank each row, then keep its best `keep` in rank order. An earlier candidate with a file
    keeps it; a candidate `can_write` is written by `write` (True when it verifies, else the record
    is an error and the next candidate takes the place); the rest are not selected."""
    ranks = rank(records)
    for r in records:
        r["rank"] = ranks.get(r["item_id"])
    for cands in by_row(records):
        places, away = int(cands[0]["keep"]), refined_away(cands)
        for r in sorted((r for r in cands if r["rank"] is not None), key=lambda r: r["rank"]):
            gets_place = places > 0 or locked(r)
            if gets_place and r.get("prior") and (r["status"] == vocabulary.WRITTEN or r.get("path")):
                # an earlier pick, or a runner-up whose signed image was kept for review: its
                # file is already there, verified, and is the image
                written(r, selected=True)
                places = max(places - 1, 0)
            elif gets_place and can_write(r):
                r["selected"] = True  # picked: written, or an error that says why not
                if write(r):
                    written(r)
                    places = max(places - 1, 0)
            else:
                reject(r, vocabulary.NOT_SELECTED, selected=False)
        for r in cands:
            if r["item_id"] in away:
                reject(r, vocabulary.REVIEWER_REFINED, selected=False, rank=None)
            if r.get("selected") is None:
                r["selected"] = False
