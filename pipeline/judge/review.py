"""What a reviewer's decision may do, and what it does to a candidate: the rules behind
`run --decisions`, pure functions of a candidate's stored outcome.

- a reject takes the candidate out of the selection (`review_reason`);
- an approval locks a candidate in whatever the CLIP threshold says, and **never** passes
  moderation (`approvable`: the one place that rule lives, for checking a decisions file and
  for the selection alike);
- a refine needs an image to start from and a strength that gives a denoising step
  (`why_not`, which review/decisions.py turns into a named problem).
"""

from __future__ import annotations

from pipeline.spec import vocabulary
from pipeline.spec.limits import denoises


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
        if not result["path"]:
            return "decision", (f"no image to refine (status {status or 'pending'}"
                                + (f", {reason}" if reason else "") + ")")
        used = strength if strength is not None else refine_strength
        if not denoises(result["steps"], used):
            given = "" if strength is not None else " ([generate].refine_strength)"
            return "strength", (f"strength {used:g}{given} × steps {result['steps']} gives no denoising "
                                f"step (give a strength of at least {1 / result['steps']:g})")
    return None
