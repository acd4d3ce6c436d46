"""Best-k of N among passing candidates; failures are never selected; prior selections count."""

from pipeline import schema
from pipeline.select import select_best


def cand(k, score, status=None, keep=2, prior=0, row="r"):
    return {"id": row, "candidate": k, "clip_score": score, "status": status, "reason": None,
            "keep": keep, "prior_selected": prior}


def test_best_k_by_score_ties_to_lower_index():
    rs = [cand(0, 20.0), cand(1, 30.0), cand(2, 20.0), cand(3, 10.0)]
    select_best(rs)
    assert [r["selected"] for r in rs] == [True, True, False, False]
    assert [r["rank"] for r in rs] == [2, 1, 3, 4]
    assert rs[2]["status"] == schema.REJECTED and rs[2]["reason"] == schema.NOT_SELECTED


def test_failed_candidates_are_never_selected():
    rs = [cand(0, 99.0, status=schema.ERROR), cand(1, 5.0), cand(2, 1.0, status=schema.REJECTED)]
    select_best(rs)
    assert [r["selected"] for r in rs] == [False, True, False]
    assert rs[0]["status"] == schema.ERROR and rs[2]["status"] == schema.REJECTED


def test_rows_are_independent_and_prior_selections_fill_places():
    rs = [cand(0, 1.0, keep=1, row="a"), cand(1, 2.0, keep=1, row="a"),
          cand(0, 1.0, keep=2, prior=1, row="b"), cand(1, 2.0, keep=2, prior=1, row="b")]
    select_best(rs)
    assert [r["selected"] for r in rs] == [False, True, False, True]
