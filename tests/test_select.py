"""Best-k of N among passed candidates, across attempts; a failed write hands its place on."""

from pipeline.judge.select import fill_places
from pipeline.spec import vocabulary


def cand(k, score, status=None, keep=2, row="r", prior=False, reason=None):
    return {"id": row, "item_id": f"{row}{k}", "candidate": k, "clip_score": score, "status": status, "reason": reason,
            "reason_code": reason, "keep": keep, "prior": prior, "selected": None, "path": None}  # bare codes


def judge(rs, fails=()):
    def write(r):
        if r["candidate"] in fails:
            r.update(status=vocabulary.ERROR, reason="write: boom", reason_code=vocabulary.WRITE_ERROR)
            return False
        return True

    # Earlier candidates come without pixels (the stage regenerates only those promoted with no file).
    fill_places(rs, write, can_write=lambda r: not r["prior"])


def test_best_k_by_score_ties_to_lower_index():
    rs = [cand(0, 20.0), cand(1, 30.0), cand(2, 20.0), cand(3, 10.0)]
    judge(rs)
    assert [r["selected"] for r in rs] == [True, True, False, False]
    assert [r["rank"] for r in rs] == [2, 1, 3, 4]
    assert [r["status"] for r in rs] == ["written", "written", "rejected", "rejected"]
    assert rs[2]["reason"] == vocabulary.NOT_SELECTED


def test_failed_candidates_are_never_ranked_or_selected():
    rs = [cand(0, 99.0, status=vocabulary.ERROR), cand(1, 5.0), cand(2, 1.0, status=vocabulary.REJECTED,
                                                                  reason="below_clip_threshold: 1 < 2")]
    judge(rs)
    assert [r["selected"] for r in rs] == [False, True, False]
    assert [r["rank"] for r in rs] == [None, 1, None]
    assert rs[0]["status"] == vocabulary.ERROR and rs[2]["reason"].startswith("below_clip")


def test_rows_are_independent():
    rs = [cand(0, 1.0, keep=1, row="a"), cand(1, 2.0, keep=1, row="a"), cand(0, 1.0, row="b"), cand(1, 2.0, row="b")]
    judge(rs)
    assert [r["selected"] for r in rs] == [False, True, True, True]


def test_judging_across_attempts_equals_judging_at_once():
    # Candidate 1 was kept earlier; candidate 0, retried now, scores higher: it takes the place.
    earlier = [cand(0, 30.0, keep=1), cand(1, 20.0, keep=1, status=vocabulary.WRITTEN, prior=True),
               cand(2, 10.0, keep=1, status=vocabulary.REJECTED, reason=vocabulary.NOT_SELECTED, prior=True)]
    at_once = [cand(0, 30.0, keep=1), cand(1, 20.0, keep=1), cand(2, 10.0, keep=1)]
    judge(earlier)
    judge(at_once)
    assert [(r["status"], r["selected"], r["rank"]) for r in earlier] == \
           [(r["status"], r["selected"], r["rank"]) for r in at_once]
    assert [r["rank"] for r in earlier] == [1, 2, 3]


def test_a_failed_write_hands_its_place_to_the_next_best():
    rs = [cand(0, 30.0, keep=1), cand(1, 20.0, keep=1), cand(2, 10.0, keep=1)]
    judge(rs, fails={0})
    assert [r["status"] for r in rs] == [vocabulary.ERROR, vocabulary.WRITTEN, vocabulary.REJECTED]
    assert [r["selected"] for r in rs] == [True, True, False]  # picked, picked, not


def test_an_earlier_pick_stays_when_nothing_outranks_it():
    rs = [cand(0, 5.0, keep=1), cand(1, 20.0, keep=1, status=vocabulary.WRITTEN, prior=True)]
    judge(rs)
    assert rs[1]["status"] == vocabulary.WRITTEN and rs[1]["selected"] and rs[1]["rank"] == 1
    assert rs[0]["status"] == vocabulary.REJECTED and rs[0]["rank"] == 2


def test_an_earlier_runner_up_whose_image_was_kept_is_promoted_without_a_new_write():
    # write_rejected kept the runner-up's signed file; when the pick fails, that file is the pick.
    rs = [cand(0, 30.0, keep=1), cand(1, 20.0, keep=1, status=vocabulary.REJECTED, reason=vocabulary.NOT_SELECTED,
                                        prior=True)]
    rs[1]["path"] = "images/r1.png"
    judge(rs, fails={0})
    assert rs[1]["status"] == vocabulary.WRITTEN and rs[1]["selected"] and rs[1]["path"] == "images/r1.png"


def decided(r, decision=None, parent=None, moderation=None):
    return {**r, "decision": decision, "parent": parent, "moderation": moderation}


def test_reviewer_decisions_approve_first_past_keep_reject_out_never_past_moderation():
    rs = [decided(cand(0, 30.0, keep=1)), decided(cand(1, 10.0, keep=1), "approve"),
          decided(cand(2, 20.0, keep=1), "approve"),
          decided(cand(3, 99.0, keep=1, status=vocabulary.REJECTED, reason=vocabulary.REVIEWER_REJECTED), "reject"),
          decided(cand(4, 50.0, keep=1, status=vocabulary.REJECTED, reason="image_unsafe: 0.9 >= 0.5"), "approve",
                  moderation="block")]
    judge(rs)
    assert [r["status"] for r in rs] == ["rejected", "written", "written", "rejected", "rejected"]
    assert [r["rank"] for r in rs] == [3, 2, 1, None, None]  # approved first, then by score
    assert rs[0]["reason"] == vocabulary.NOT_SELECTED and rs[4]["reason"].startswith("image_unsafe")


def test_a_passed_refinement_takes_its_parents_place_a_failed_one_leaves_it():
    parent = decided(cand(0, 30.0, keep=1), "refine")
    runner_up = decided(cand(1, 20.0, keep=1))
    child = decided(cand(2, 5.0, keep=1), parent="r0")
    rs = [dict(parent), dict(runner_up), dict(child)]
    judge(rs)
    assert [r["status"] for r in rs] == ["rejected", "rejected", "written"]
    assert rs[0]["reason"] == vocabulary.REVIEWER_REFINED and rs[1]["reason"] == vocabulary.NOT_SELECTED
    failed = {**child, "status": vocabulary.REJECTED, "reason": "below_clip_threshold: 5 < 10"}
    rs = [dict(parent), dict(runner_up), failed]
    judge(rs)
    assert [r["status"] for r in rs] == ["written", "rejected", "rejected"]  # the chosen image stays
