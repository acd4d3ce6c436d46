"""Best-k of N per row, by CLIP score, among the candidates that passed every filter.

Pure: works on candidate records (dicts). A candidate that already has a status (error,
blocked prompt, unsafe image, below threshold) is never selected; the others are ranked by
score (ties → lower candidate index) and the top `keep` are selected; the rest are
`rejected / not_selected`. A row resumed after a job change may have some candidates judged
in an earlier run: `prior_selected` of them were selected, so only the remaining places
are filled now, which gives the same selection as judging all candidates at once.
"""

from __future__ import annotations

from collections import defaultdict

from pipeline import schema


def select_best(records: list[dict]) -> None:
    """Set `selected`, `rank`, and for the losers `status`/`reason`, in place."""
    by_row: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_row[r["id"]].append(r)
    for cands in by_row.values():
        passing = [r for r in cands if r.get("status") is None]
        passing.sort(key=lambda r: (-(r["clip_score"] if r["clip_score"] is not None else -1.0),
                                    r["candidate"]))
        places = max(0, int(cands[0]["keep"]) - int(cands[0].get("prior_selected") or 0))
        for rank, r in enumerate(passing, start=1):
            r["rank"] = rank
            r["selected"] = rank <= places
            if not r["selected"]:
                r["status"], r["reason"] = schema.REJECTED, schema.NOT_SELECTED
        for r in cands:
            r.setdefault("selected", False)
            if r.get("selected") is None:
                r["selected"] = False
