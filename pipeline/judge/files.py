"""Which candidates have an image file, and which images travel to the writer.

The selection (`select.py`) gives the places; these rules say what happens to the files around
them: the pixels shipped from the model actor (the picks, a reserve of runners-up, every image
when rejected ones are kept for review), the rejected images written for a reviewer
(`[output].write_rejected`), and the earlier files that stay when their candidate loses its
place (a refined candidate's, whose refinements start from it and name it).
"""

from __future__ import annotations

from pipeline.judge.select import in_reserve
from pipeline.plan.work import PRIOR
from pipeline.spec import vocabulary


def ships_pixels(r: dict, ranks: dict[str, int], write_rejected: bool) -> bool:
    """The writer may need this candidate's pixels: it has a place or is in reserve for one, or
    rejected images are kept for review."""
    return write_rejected or in_reserve(r, ranks)


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
