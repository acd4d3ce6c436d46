"""The new-round rule: when a reviewer's rejects leave a row fewer candidates able to take a
place than it keeps, the row gets a new round of candidates (fresh derived seeds, planned by
plan/build.py from the stored decisions).

Pure: works on the stored outcomes of the rows concerned and the decisions to come, with the
selection's own rule (`select.passed`), so a new round is asked for exactly when the selection
would leave a place empty.
"""

from __future__ import annotations

from pipeline.judge.outcome import code_of
from pipeline.judge.select import passed
from pipeline.spec import vocabulary


def new_rejects(changed: list[dict], current: dict[str, dict]) -> list[dict]:
    """The rejects among the `changed` decisions that are new: a reject whose note alone changed
    asks for nothing."""
    reject = vocabulary.REJECT
    return [d for d in changed if d["decision"] == reject and current.get(d["item_id"], {}).get("decision") != reject]


def ask_new_rounds(changed: list[dict], rows: list[dict], current: dict[str, dict]) -> None:
    """Flag (`new_round`) the first new reject of each row that, once the `changed` decisions
    apply over the `current` ones, leaves the row fewer candidates able to take a place than it
    keeps. `rows`: the stored outcomes of every candidate of the rows the new rejects are on.
    Channel formats neither take a row's places nor ask for rounds: a rejected format is made
    again on its own (plan/formats.py)."""
    formats = {r["item_id"] for r in rows if r.get("variant") is not None}
    rows = [r for r in rows if r["item_id"] not in formats]
    rejects = [d for d in new_rejects(changed, current) if d["item_id"] not in formats]
    if not rejects:
        return
    after = {k: v["decision"] for k, v in current.items()} | {d["item_id"]: d["decision"] for d in changed}
    children: dict[str, list[dict]] = {}
    for r in rows:
        children.setdefault(r["parent"], []).append(r)

    def able(r: dict) -> bool:
        """The selection's own rule, on the candidate as it was judged, under the decisions to come."""
        if code_of(r) == vocabulary.REVIEWER_REFINED:  # its place comes back unless a refinement keeps it
            if any(able(child) for child in children.get(r["item_id"], [])):
                return False
            r = {**r, "reason": vocabulary.NOT_SELECTED, "reason_code": vocabulary.NOT_SELECTED}
        return passed({**r, "prior": r["status"] is not None, "decision": after.get(r["item_id"])})

    count: dict[str, int] = {}
    keep: dict[str, int] = {}
    for r in rows:
        keep[r["id"]] = r["keep"]
        count[r["id"]] = count.get(r["id"], 0) + able(r)
    for d in changed:
        if d["decision"] == vocabulary.REFINE:  # each makes one, to come
            count[d["id"]] = count.get(d["id"], 0) + 1
    flagged: set[str] = set()
    for d in rejects:
        if d["id"] not in flagged and count.get(d["id"], 0) < keep[d["id"]]:
            d["new_round"] = True
            flagged.add(d["id"])
