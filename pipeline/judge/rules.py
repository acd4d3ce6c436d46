"""The filter rules, in one place: what rejects a candidate's prompt and its image, applied when
a candidate is measured and again, from its stored scores, when the rules have changed since
an earlier run judged it (re-judging without regenerating), and the moderation verdict they
give. (What a reviewer's decision does is judge/review.py's.)

A candidate's outcome records the rules it was judged under (`judged_with`, the plan's
`judge_key`: the filter settings and the row's keep and CLIP threshold). When they differ, the
row is judged again from what is stored: scores and embeddings are never measured twice.
"""

from __future__ import annotations

from pipeline.judge.outcome import Reason, code_of, reject
from pipeline.judge.review import review_reason
from pipeline.plan.identity import digest, encode
from pipeline.spec import vocabulary
from pipeline.spec.config import FilterSection

# The outcome of a measured candidate that a re-judging may reset, when its prompt was blocked
# before and is not now: it was never generated, so it is generated as a new candidate.
_UNMEASURED = ("status", "reason", "reason_code", "selected", "rank", "moderation", "prompt_unsafe_score", "clip_score",
               "image_unsafe_score", "clip_model", "moderation_model", "path", "sha256", "bytes", "c2pa_label",
               "c2pa_state", "run_id", "judged_with")


def rules_key(f: FilterSection) -> str:
    """The job-wide filter settings, as a short stable string (the row's keep and CLIP threshold
    are added per row by the plan), hashed from their canonical encoding (`identity.py`)."""
    terms = sorted(f.blocked_terms)
    return digest(encode("rules-v2", float(f.image_unsafe_threshold), float(f.prompt_unsafe_threshold),
                         len(terms), *terms), 6).hex()


def prompt_reason(term: str | None, score: float | None, threshold: float) -> Reason | None:
    """Why a prompt is blocked (a blocked term, or the classifier's score), or None."""
    if term is not None:
        return Reason(vocabulary.PROMPT_BLOCKED, f"term {term!r}")
    if score is not None and score >= threshold:
        return Reason(vocabulary.PROMPT_BLOCKED, f"classifier score {score:.3f} >= {threshold}")
    return None


def image_reason(clip_score: float, unsafe: float, clip_threshold: float, unsafe_threshold: float) -> Reason | None:
    """Why a generated image is rejected (unsafe, then below the CLIP threshold), or None."""
    if unsafe >= unsafe_threshold:
        return Reason(vocabulary.IMAGE_UNSAFE, f"score {unsafe:.3f} >= {unsafe_threshold}")
    if clip_score < clip_threshold:
        return Reason(vocabulary.BELOW_CLIP_THRESHOLD, f"{clip_score:.2f} < {clip_threshold}")
    return None


def moderation(reason: Reason | None) -> str:
    """The moderation verdict of a measured candidate: blocked when its prompt or its image was
    (a CLIP score below the threshold is no moderation matter)."""
    blocked = reason is not None and reason.code in (vocabulary.PROMPT_BLOCKED, vocabulary.IMAGE_UNSAFE)
    return vocabulary.BLOCK if blocked else vocabulary.PASS


def rejudge(r: dict, blocked_term: str | None, f: FilterSection) -> bool:
    """Apply today's rules to an earlier judged candidate from its stored scores. Returns False
    when it must be generated as a new candidate (its prompt was blocked, and is not now).

    A candidate that fails a filter now is rejected (a pick among them loses its place and its
    file); one that passes now competes for the places again (`fill_places` decides), a pick
    keeping its file while it stays among the best. A reviewer's reject takes it out; an
    approval sets the CLIP threshold aside, never moderation."""
    if reason := review_reason(r):
        reject(r, reason, selected=False, rank=None)
        return True
    blocked = prompt_reason(blocked_term, r["prompt_unsafe_score"], f.prompt_unsafe_threshold)
    if blocked is None and r["clip_score"] is None:
        if r["status"] == vocabulary.REJECTED and code_of(r) == vocabulary.PROMPT_BLOCKED:
            r.update(dict.fromkeys(_UNMEASURED))
            return False
        return True  # nothing stored to judge again
    clip_threshold = r["clip_threshold"] if r.get("decision") != vocabulary.APPROVE else float("-inf")
    reason = blocked or image_reason(r["clip_score"], r["image_unsafe_score"], clip_threshold, f.image_unsafe_threshold)
    if reason is not None:
        reject(r, reason, selected=False, rank=None, moderation=moderation(reason))
    elif r["status"] != vocabulary.WRITTEN:
        reject(r, vocabulary.NOT_SELECTED, moderation=vocabulary.PASS)
    return True
