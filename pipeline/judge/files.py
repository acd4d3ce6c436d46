"""Which candidates have an image file, and which images travel to the writer.

The selection (`select.py`) gives the places; these rules say what happens to the files around
them: the pixels shipped from the model actor (the picks, a reserve of runners-up, every image
when rejected ones are kept for review), the rejected images written for a reviewer
(`[output].write_rejected`), the earlier files that stay when their candidate loses its
place (a refined candidate's, whose refinements start from it and name it), and which judged
candidates get a small preview for review (`[output].previews`).
"""

from __future__ import annotations

from pipeline.judge.outcome import code_of
from pipeline.judge.select import in_reserve
from pipeline.plan.work import PRIOR
from pipeline.spec import vocabulary

# Rejections that leave no viewable image: a blocked prompt made none; a moderation-blocked image
# must not be shown, not even small (`write_rejected` is the explicit opt-in to keep it).
UNSHOWN = (vocabulary.PROMPT_BLOCKED, vocabulary.IMAGE_UNSAFE)


def ships_pixels(r: dict, ranks: dict[str, int], write_rejected: bool, previews: bool = False) -> bool:
    """The writer may need this candidate's pixels: it has a place or is in reserve for one,
    rejected images are kept for review, or it gets a preview (before the writer judges, a
    candidate that passed has no status yet: it is previewed whatever its place)."""
    return write_rejected or in_reserve(r, ranks) or (
        previews and r["status"] != vocabulary.ERROR and code_of(r) not in UNSHOWN)


def previewed(r: dict, previews: bool) -> bool:
    """A judged candidate a reviewer may see as a preview: written or rejected, except where its
    image must not be shown (`UNSHOWN`). Reviewer-rejected ones too: what was rejected stays
    visible beside what replaced it."""
    return previews and (r["status"] == vocabulary.WRITTEN or (
        r["status"] == vocabulary.REJECTED and code_of(r) not in UNSHOWN))


def written_for_review(r: dict, write_rejected: bool) -> bool:
    """A rejected candidate whose image is written all the same, for a reviewer to see: when
    rejected images are kept, unless a reviewer rejected it."""
    return write_rejected and r["status"] == vocabulary.REJECTED and r["decision"] != vocabulary.REJECT


def keeps_file(r: dict, write_rejected: bool) -> bool:
    """An earlier candidate that lost its place keeps its file when rejected images are kept for
    review, and always when a reviewer refined it (its refinements start from it and name it);
    never when a reviewer rejected it."""
    if not (r[PRIOR] and r["path"] and r["status"] == vocabulary.REJECTED):
        return False
    return r["decision"] == vocabulary.REFINE or (write_rejected and r["decision"] != vocabulary.REJECT)
