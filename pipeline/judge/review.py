"""What a reviewer's decision may do, and what it does to a candidate: the rules behind
`run --decisions`, pure functions of a candidate's stored outcome.

- a reject takes the candidate out of the selection (`review_reason`);
- an approval locks a candidate in whatever the CLIP threshold says, and **never** passes
  moderation (`approvable`: the one place that rule lives, for checking a decisions file and
  for the selection alike);
- a refine needs an image to start from and a strength that gives a denoising step
  (`why_not`, which review/decisions.py turns into a named problem);
- which decision is in force when several were recorded (`in_force`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.spec import fallbacks, vocabulary
from pipeline.spec.limits import denoises

if TYPE_CHECKING:
    import pyarrow as pa


def review_reason(r: dict) -> str | None:
    """Why a reviewer's decision takes a candidate out of the selection (a reject; the note is
    its own column), or None. (A refined candidate gives its place to its refinement once that
    passes: `select.refined_away`.)"""
    return vocabulary.REVIEWER_REJECTED if r.get("decision") == vocabulary.REJECT else None


def blocked_by_moderation(r: dict) -> bool:
    """Moderation blocked its prompt or its image (whatever its reason says now: a reviewer's
    reject may have replaced it)."""
    return r.get("moderation") == vocabulary.BLOCK


def approvable(r: dict) -> bool:
    """A reviewer's approval can pass this candidate: it was measured without an error, and
    moderation did not block it."""
    return r.get("status") != vocabulary.ERROR and not blocked_by_moderation(r)


def why_not(decision: str, result: dict, strength: float | None, refine_strength: float) -> tuple[str, str] | None:
    """Why `decision` cannot apply to the candidate whose stored outcome is `result`: (the
    decisions file's column at fault, what is wrong), or None. `strength`: the refine's own,
    else `refine_strength` ([generate].refine_strength) applies."""
    status, reason = result["status"], result["reason"] or ""
    if decision in (vocabulary.APPROVE, vocabulary.REFINE) and blocked_by_moderation(result):
        return "decision", f"cannot {decision} a candidate moderation blocked"
    if decision == vocabulary.APPROVE and status in (None, vocabulary.ERROR):
        return "decision", (f"nothing to approve: the candidate is {status or 'pending'}"
                            + (f" ({reason})" if reason else ""))
    if decision == vocabulary.REFINE:
        if result.get("variant") is not None:  # its pixels are its source's and margins around them
            return "decision", (f"a channel format ({result['variant']}) cannot be refined: refine the image it "
                                "was made from (its formats follow), or reject it for a fresh one")
        if result.get("clean_path") is None and (result.get("logo") or result.get("headline")) and result["path"]:
            return "decision", ("a refinement starts from the image as generated, and this one's was not kept beside "
                                "its brand overlay ([overlay].keep_clean = false when it was written)")
        if not result["path"]:
            return "decision", (f"no image to refine (status {status or 'pending'}"
                                + (f", {reason}" if reason else "") + ")")
        used = fallbacks.refine_strength(strength, refine_strength)
        if not denoises(result["steps"], used):
            given = "" if strength is not None else " ([generate].refine_strength)"
            return "strength", (f"strength {used:g}{given} × steps {result['steps']} gives no denoising "
                                f"step (give a strength of at least {1 / result['steps']:g})")
    return None


def last_per_item(history: pa.Table) -> pa.Table:
    """The last row of each item id of `history` (decisions, in the order recorded)."""
    import pyarrow as pa

    order = pa.array(range(history.num_rows), pa.int64())
    last = history.append_column("__order", order).group_by("item_id").aggregate([("__order", "max")])
    return history.take(pa.array(sorted(last["__order_max"].to_pylist()), pa.int64()))


def in_force(history: pa.Table) -> pa.Table:
    """The decision each decided item is judged by: its latest, except that a refine after an
    approval leaves the approval standing (the refinement is made; the approved image stays
    locked until a reviewer rejects it)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    latest = last_per_item(history)
    judged = last_per_item(history.filter(pc.not_equal(history["decision"], vocabulary.REFINE)))
    approved = judged.filter(pc.equal(judged["decision"], vocabulary.APPROVE))["item_id"]
    refined_after_approval = pc.and_(pc.equal(latest["decision"], vocabulary.REFINE),
                                     pc.is_in(latest["item_id"], approved))
    if not pc.any(refined_after_approval).as_py():
        return latest
    standing = judged.filter(pc.is_in(judged["item_id"], latest["item_id"].filter(refined_after_approval)))
    return pa.concat_tables([latest.filter(pc.invert(refined_after_approval)), standing])
