"""Re-judging without regenerating: a rerun after a change of rules (CLIP threshold, keep,
blocked terms) applies them to the stored scores, and generates only the images it now needs:
the promoted runners-up (same seeds, so the same pixels), never a candidate measured before."""

from pathlib import Path

import pyarrow.parquet as pq

from pipeline.errors import EXIT_OK
from pipeline.review.verify import verify_output
from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from pipeline.storage.layout import RESULTS
from tests.helpers import write_job

ROWS = {"id": ["a", "b", "c"], "prompt": ["a red mug", "a blue shoe", "a desk lamp"]}
FAST = "[generate]\nsteps = 1\nwidth = 64\nheight = 64\nbatch_size = 4\n"


def run(folder: Path, extra: str = "", **keys):
    keys = {"num_candidates": 3, "keep": 1, **keys}
    report = run_job(load_job(write_job(folder, ROWS, styles=None, extra=FAST + extra, **keys)),
                     backend="in-process")
    rows = {(r["id"], r["candidate"]): r for r in pq.read_table(report.output_dir / RESULTS).to_pylist()}
    return report, rows


def picks(rows: dict) -> dict:
    return {k: r for k, r in rows.items() if r["status"] == "written"}


def test_a_higher_clip_threshold_rejudges_from_stored_scores_and_regenerates_only_the_promoted(tmp_path, model_calls):
    first, before = run(tmp_path)
    assert first.exit_code == EXIT_OK and model_calls == {"generated": 9, "measured": 9}
    # A threshold between the best and the second best score of row a: its pick fails now.
    scores = sorted((r["clip_score"] for (i, _), r in before.items() if i == "a"), reverse=True)
    threshold = round((scores[0] + scores[1]) / 2, 4)
    model_calls.update(generated=0, measured=0)
    again, after = run(tmp_path, extra=f"[filter]\nclip_threshold = {threshold}\n")
    assert again.exit_code == EXIT_OK
    # Expected from the stored scores alone: each row's best candidate at or above the threshold.
    expected = {}
    for (i, k), r in sorted(before.items(), key=lambda item: item[1]["clip_score"]):
        if r["clip_score"] >= threshold:
            expected[i] = k  # the last (highest) one of each row stays
    assert {k for k in picks(after)} == {(i, k) for i, k in expected.items()}
    promoted = [key for key in picks(after) if key not in picks(before)]
    assert model_calls == {"generated": len(promoted), "measured": 0}  # nothing measured twice
    for key, r in after.items():
        assert r["clip_score"] == before[key]["clip_score"]  # stored scores, not new ones
        if r["clip_score"] < threshold:
            assert r["status"] == "rejected" and r["reason"].startswith("below_clip_threshold") and r["path"] is None
    out = again.output_dir
    assert {r["path"] for r in picks(after).values()} == {p.relative_to(out).as_posix()
                                                          for p in (out / "images").rglob("*.png")}
    assert verify_output(out) == ([], len(expected))
    # The same rules again: nothing to judge, nothing generated.
    model_calls.update(generated=0, measured=0)
    same, _ = run(tmp_path, extra=f"[filter]\nclip_threshold = {threshold}\n")
    assert model_calls == {"generated": 0, "measured": 0} and same.summary["this_run"] == {}


def test_keeping_more_writes_the_runners_up_without_measuring_again(tmp_path, model_calls):
    _, before = run(tmp_path)
    model_calls.update(generated=0, measured=0)
    again, after = run(tmp_path, keep=2)
    assert again.exit_code == EXIT_OK and model_calls == {"generated": 3, "measured": 0}
    for i in ("a", "b", "c"):
        best_two = sorted((r["clip_score"], k) for (j, k), r in before.items() if j == i)[::-1][:2]
        assert {k for (j, k) in picks(after) if j == i} == {k for _, k in best_two}
        assert [after[i, k]["rank"] for _, k in best_two] == [1, 2]
    assert verify_output(again.output_dir) == ([], 6)


def test_a_blocked_term_takes_the_pick_out_and_lifting_it_brings_the_same_image_back(tmp_path, model_calls):
    first, before = run(tmp_path)
    shoe = next(r for (i, _), r in picks(before).items() if i == "b")
    model_calls.update(generated=0, measured=0)
    blocked, during = run(tmp_path, extra='[filter]\nblocked_terms = ["shoe"]\n')
    assert model_calls == {"generated": 0, "measured": 0}
    assert all(r["status"] == "rejected" and r["reason"] == "prompt_blocked: term 'shoe'" and r["path"] is None
               for (i, _), r in during.items() if i == "b")
    assert not (blocked.output_dir / shoe["path"]).exists() and verify_output(blocked.output_dir) == ([], 2)
    lifted, after = run(tmp_path)
    assert after["b", shoe["candidate"]]["status"] == "written"
    assert after["b", shoe["candidate"]]["item_id"] == shoe["item_id"]
    assert verify_output(lifted.output_dir) == ([], 3)


def test_shards_committed_before_reason_codes_existed_are_judged_as_they_were(tmp_path, model_calls):
    """An output whose shards predate the `reason_code` column: a row blocked before it was ever
    measured is generated once its term is lifted, and the summary counts old rows by code."""
    import json

    from pipeline.storage.layout import SUMMARY
    from tests.helpers import as_older_release

    blocked, during = run(tmp_path, extra='[filter]\nblocked_terms = ["shoe"]\n')
    assert all(r["clip_score"] is None for (i, _), r in during.items() if i == "b")
    assert as_older_release(blocked.output_dir, drop=("reason_code",))  # as an earlier release wrote it
    model_calls.update(generated=0, measured=0)
    lifted, after = run(tmp_path)
    assert model_calls == {"generated": 3, "measured": 3}  # row b's candidates, never measured before
    assert sum(r["status"] == "written" for (i, _), r in after.items() if i == "b") == 1
    assert verify_output(lifted.output_dir) == ([], 3)
    reasons = json.loads((lifted.output_dir / SUMMARY).read_text())["reasons"]
    assert set(reasons) == {"not_selected"}, reasons
