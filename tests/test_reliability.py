"""Faults during a run (in-process, fast): failures are rows, OOM splits, budgets stop cleanly,
bad signers fail before any work, keys never leak, nothing lands outside the output folder."""

import os
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import EXIT_INCOMPLETE, EXIT_OK, JobError, SignerError
from pipeline.plan.identity import derive_seed
from pipeline.provenance.demo_ca import make_demo_credentials
from pipeline.review.verify import verify_output
from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from tests.helpers import write_job

ROWS = {"id": ["a", "b", "c"], "prompt": ["a mug", "a shoe", "a lamp"]}
FAST = "[generate]\nsteps = 1\nwidth = 64\nheight = 64\nbatch_size = 4\n"


def results(report):
    return pq.read_table(report.output_dir / "results.parquet").to_pylist()


def make_job(tmp_path, extra="", **kw):
    return load_job(write_job(tmp_path, ROWS, styles=None, extra=FAST + extra, **kw))


def test_a_failing_candidate_becomes_an_error_row_and_a_rerun_retries_it(tmp_path, monkeypatch):
    cfg = make_job(tmp_path, num_candidates=2, keep=1, seed=5, max_failed_fraction=0.5)
    bad = derive_seed("job", 5, "b", 0)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"candidate.error={bad}")
    report = run_job(cfg, backend="in-process")
    assert report.exit_code == EXIT_OK
    assert (report.summary["planned"], report.summary["generated"], report.summary["error"]) == (6, 5, 1)
    rows = {(r["id"], r["candidate"]): r for r in results(report)}
    assert rows["b", 0]["status"] == "error"
    assert "injected failure" in rows["b", 0]["reason"] and rows["b", 0]["path"] is None
    assert rows["b", 1]["status"] == "written"  # the rest of its row and batch went on
    assert sum(r["status"] == "written" for r in rows.values()) == 3

    monkeypatch.delenv("ASSET_PIPELINE_FAULTS")
    again = run_job(cfg, backend="in-process")
    rows2 = {(r["id"], r["candidate"]): r for r in results(again)}
    assert len(rows2) == 6 and rows2["b", 0]["status"] in ("written", "rejected")
    for key in ("ms_generate", "worker", "clip_score", "finished_at" if rows2["b", 1]["status"] == "written"
                else "seed"):
        assert rows2["b", 1][key] == rows["b", 1][key]  # the finished candidate was not redone
    assert sum(r["status"] == "written" for r in rows2.values() if r["id"] == "b") == 1
    assert sorted(r["rank"] for r in rows2.values() if r["id"] == "b") == [1, 2]


def test_out_of_memory_splits_the_batch_and_retries(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", "candidate.oom")
    report = run_job(make_job(tmp_path, num_candidates=2, keep=1), backend="in-process")
    rows = results(report)
    assert report.exit_code == EXIT_OK and all(r["status"] in ("written", "rejected") for r in rows)
    assert all(r["batch_size"] == 1 and r["attempt"] >= 2 for r in rows)


def test_error_budget_stops_the_run_cleanly(tmp_path, monkeypatch):
    cfg = make_job(tmp_path, max_failed_fraction=0.0, seed=1)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"candidate.error={derive_seed('job', 1, 'a', 0)}")
    report = run_job(cfg, backend="in-process")
    assert report.exit_code == EXIT_INCOMPLETE
    assert "error budget exceeded" in report.stopped
    assert report.summary["stopped"] == report.stopped and report.summary["error"] == 1
    assert len(results(report)) == 3  # the table still lists every candidate


def test_bad_signer_fails_before_any_generation(tmp_path):
    good = make_demo_credentials(tmp_path / "creds")
    other = make_demo_credentials(tmp_path / "other")
    extra = (f'[signer]\nmode = "files"\ncert_chain = "{good.cert_chain}"\n'
             f'private_key = "{other.private_key}"\ntrust_anchors = "{good.ca_cert}"\n')
    cfg = make_job(tmp_path, extra=extra)
    with pytest.raises(SignerError):
        run_job(cfg, backend="in-process")
    out = Path(cfg.job.output)
    assert not (out / "images").exists() and not (out / "_shards").exists()
    with pytest.raises(SignerError):  # the failed run released the folder: a retry is not "in use"
        run_job(cfg, backend="in-process")


def test_an_output_format_c2pa_cannot_sign_fails_before_any_generation(tmp_path, monkeypatch):
    from tests.test_provenance import without_webp

    without_webp(monkeypatch)
    cfg = make_job(tmp_path, extra='[output]\nformat = "webp"\n')
    with pytest.raises(SignerError, match="image/webp"):
        run_job(cfg, backend="in-process")
    out = Path(cfg.job.output)
    assert not (out / "images").exists() and not (out / "_shards").exists()


def test_key_material_never_reaches_logs_results_or_metadata(tmp_path, capfd):
    creds = make_demo_credentials(tmp_path / "creds")
    os.environ["TEST_C2PA_KEY"] = creds.private_key.read_text()
    try:
        extra = (f'[signer]\nmode = "files"\ncert_chain = "{creds.cert_chain}"\n'
                 f'private_key_env = "TEST_C2PA_KEY"\ntrust_anchors = "{creds.ca_cert}"\n')
        report = run_job(make_job(tmp_path, extra=extra), backend="in-process")
    finally:
        key_text = os.environ.pop("TEST_C2PA_KEY")
    assert report.exit_code == EXIT_OK
    assert verify_output(report.output_dir) == ([], 3)  # trusts the CA the run was configured with
    secret_lines = [ln for ln in key_text.splitlines() if ln and "-----" not in ln]
    logs = "".join(capfd.readouterr())
    haystacks = {"logs": logs}
    for f in report.output_dir.rglob("*"):
        if f.is_file() and not f.name.endswith(".png"):
            haystacks[str(f)] = f.read_bytes().decode("latin-1")
    for where, text in haystacks.items():
        assert "PRIVATE KEY" not in text, where
        assert not any(line in text for line in secret_lines), where


def test_nothing_is_written_outside_the_output_folder(tmp_path):
    # A fresh process whose working directory and home folder are watched too: a stray relative
    # path, or a library cache in the user's home, would land there. (HOME is set before any
    # library reads it; the temp folder may hold library caches.)
    import subprocess
    import sys

    cwd, home = tmp_path / "cwd", tmp_path / "home"
    for folder in (cwd, home):
        folder.mkdir()
    job = write_job(tmp_path / "job", ROWS, styles=None, extra=FAST)
    before = set(tmp_path.rglob("*"))
    env = {**os.environ, "HOME": str(home), "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--in-process"], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "job" / "out"
    created = set(tmp_path.rglob("*")) - before
    assert created and all(out in p.parents or p == out for p in created), \
        sorted(str(p) for p in created if out not in p.parents and p != out)


def test_unwritable_output_is_refused_before_any_work(tmp_path):
    (tmp_path / "afile").write_text("not a folder")
    with pytest.raises(JobError, match="not writable"):
        run_job(make_job(tmp_path, output=str(tmp_path / "afile" / "out")), backend="in-process")


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    from pipeline.run.job import prepare_output
    from pipeline.storage.lock import acquire
    from pipeline.storage.store import Output

    cfg = make_job(tmp_path)
    out = Output(cfg.job.output)
    prepare_output(out)
    held = acquire(out, "someone else")
    try:
        with pytest.raises(JobError, match="another run is using"):
            run_job(cfg, backend="in-process")
    finally:
        held.close()


def test_a_scoring_failure_costs_only_its_candidate(tmp_path, monkeypatch):
    cfg = make_job(tmp_path, seed=3, max_failed_fraction=0.5)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"score.error={derive_seed('job', 3, 'b', 0)}")
    report = run_job(cfg, backend="in-process")
    rows = {r["id"]: r for r in results(report)}
    assert rows["b"]["status"] == "error" and rows["b"]["reason"].startswith("score: RuntimeError")
    funnel = [report.summary[k] for k in ("planned", "generated", "passed_moderation", "passed_filters",
                                          "selected", "written")]
    assert funnel == [3, 3, 2, 2, 2, 2]
    assert rows["a"]["status"] == rows["c"]["status"] == "written"  # same batch, unaffected


def test_blocked_terms_apply_to_the_style_template_too(tmp_path):
    styles = {"style": ["edgy"], "prompt_template": ["{prompt}, gore aesthetic"]}
    rows = {"id": ["a", "b"], "prompt": ["a mug", "a lamp"], "style": ["edgy", None]}
    cfg = load_job(write_job(tmp_path, rows, styles=styles, extra=FAST + '[filter]\nblocked_terms = ["gore"]\n'))
    out = {r["id"]: r for r in results(run_job(cfg, backend="in-process"))}
    assert out["a"]["status"] == "rejected" and out["a"]["reason"] == "prompt_blocked: term 'gore'"
    assert out["a"]["ms_generate"] is None and out["b"]["status"] == "written"


def test_shared_embedding_encodes_each_image_once(tmp_path):
    """With an embedding head, the CLIP vision tower runs once per image for score + moderation."""
    from pipeline.plan.work import candidates, nest
    from pipeline.stages.candidate import CandidateStage

    cfg = make_job(tmp_path, extra='[models]\nmoderation = "embedded:tiny-clip-head"\n', num_candidates=2, keep=1)
    stage = CandidateStage(cfg)
    encoded = []
    stage.scorer.model.visual.register_forward_hook(lambda m, args, out: encoded.append(args[0].shape[0]))
    from pipeline.plan.build import build_plan
    from pipeline.spec.manifest import load_inputs

    out = stage(nest(candidates(build_plan(load_inputs(cfg), cfg)))).to_pylist()
    assert sum(encoded) == len(out) == 6
    assert all(r["image_unsafe_score"] is not None and r["clip_score"] is not None for r in out)
    assert all(r["pixels"] for r in out)  # keep 1 of 2: the pick and its reserve go to the writer


def test_a_head_for_another_clip_is_refused(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipeline.stages.candidate import CandidateStage

    save_file({"weight": torch.zeros(2, 16), "bias": torch.zeros(2)}, str(tmp_path / "h.safetensors"),
              metadata={"labels": '["normal", "nsfw"]'})
    cfg = make_job(tmp_path, extra=f'[models]\nmoderation = "clip-head:{tmp_path / "h.safetensors"}"\n')
    with pytest.raises(ValueError, match="reads 16-d embeddings but"):
        CandidateStage(cfg)


def _clean_scores(tmp_path, **kw) -> dict:
    """Every candidate's CLIP score from a clean run of the same job in another folder."""
    cfg = make_job(tmp_path / "clean", **kw)
    return {(r["id"], r["candidate"]): r for r in results(run_job(cfg, backend="in-process"))}


def test_a_retried_candidate_that_outscores_the_pick_takes_its_place(tmp_path, monkeypatch):
    # Best-k across attempts equals judging every candidate at once: one rank 1, the better
    # image kept, the earlier pick demoted and its file removed, nothing else regenerated.
    kw = dict(num_candidates=3, keep=1, seed=9, max_failed_fraction=0.5)
    clean = _clean_scores(tmp_path, **kw)
    best = max((k for k in clean if k[0] == "b"), key=lambda k: clean[k]["clip_score"])
    cfg = make_job(tmp_path / "run", **kw)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"candidate.error={clean[best]['seed']}")
    first = {(r["id"], r["candidate"]): r for r in results(run_job(cfg, backend="in-process"))}
    assert first[best]["status"] == "error"
    runner_up = next(k for k in first if k[0] == "b" and first[k]["status"] == "written")
    monkeypatch.delenv("ASSET_PIPELINE_FAULTS")
    again = run_job(cfg, backend="in-process")
    rows = {(r["id"], r["candidate"]): r for r in results(again)}
    for key, r in rows.items():
        assert (r["status"], r["selected"], r["rank"]) == (clean[key]["status"], clean[key]["selected"],
                                                           clean[key]["rank"]), key
    assert rows[runner_up]["path"] is None and not (again.output_dir / first[runner_up]["path"]).exists()
    assert again.summary["this_run"]["written"] == 1  # only the retried candidate was generated
    assert verify_output(again.output_dir) == ([], 3)


def test_a_pick_whose_write_fails_hands_its_place_to_the_runner_up(tmp_path, monkeypatch):
    kw = dict(num_candidates=3, keep=1, seed=4, max_failed_fraction=0.5)
    clean = _clean_scores(tmp_path, **kw)
    best = next(k for k in clean if k[0] == "a" and clean[k]["rank"] == 1)
    second = next(k for k in clean if k[0] == "a" and clean[k]["rank"] == 2)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"write.error={clean[best]['seed']}")
    report = run_job(make_job(tmp_path / "run", **kw), backend="in-process")
    rows = {(r["id"], r["candidate"]): r for r in results(report)}
    assert rows[best]["status"] == "error" and rows[best]["reason"].startswith("write: ")
    assert rows[second]["status"] == "written" and rows[second]["selected"]
    assert sum(r["status"] == "written" for r in rows.values()) == 3  # one per row, row a included
    assert verify_output(report.output_dir) == ([], 3)


def test_an_exception_in_a_stage_costs_only_its_unit(tmp_path, monkeypatch):
    cfg = make_job(tmp_path, seed=2, max_failed_fraction=0.5).replace("generate", batch_size=1)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"prompt.error={derive_seed('job', 2, 'b', 0)}")
    report = run_job(cfg, backend="in-process")
    rows = {r["id"]: r for r in results(report)}
    assert rows["b"]["status"] == "error" and "injected prompt-check failure" in rows["b"]["reason"]
    assert rows["a"]["status"] == rows["c"]["status"] == "written"
    assert report.exit_code == EXIT_OK
    # Like every error reason, "<stage>: <message>": the counts show the stage's code, not a sentence.
    assert rows["b"]["reason"].startswith("generate: unit failed: RuntimeError: injected prompt-check failure")
    assert report.summary["reasons"].get("generate") and all(" " not in code for code in report.summary["reasons"])


def test_what_was_ready_is_committed_when_the_driver_is_interrupted(tmp_path, monkeypatch):
    from pipeline.run.shards import ShardStore

    cfg = make_job(tmp_path).replace("generate", batch_size=1).replace("output", shard_rows=1000)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", "driver.interrupt_after_units=2")
    with pytest.raises(KeyboardInterrupt):
        run_job(cfg, backend="in-process")
    committed = ShardStore(Path(cfg.job.output)).read()
    assert committed is not None and sorted(committed["id"].to_pylist()) == ["a", "b"]
    monkeypatch.delenv("ASSET_PIPELINE_FAULTS")
    again = run_job(cfg, backend="in-process")
    assert again.summary["this_run"] == {"written": 1} and verify_output(again.output_dir) == ([], 3)


FUNNEL = ("planned", "generated", "passed_moderation", "passed_filters", "selected", "signed", "written")


def test_the_funnel_is_monotonic_when_a_write_fails(tmp_path, monkeypatch):
    kw = dict(num_candidates=3, keep=1, seed=4, max_failed_fraction=0.5)
    clean = _clean_scores(tmp_path, **kw)
    best = next(k for k in clean if k[0] == "a" and clean[k]["rank"] == 1)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"write.error={clean[best]['seed']}")
    report = run_job(make_job(tmp_path / "run", **kw), backend="in-process")
    counts = [report.summary[k] for k in FUNNEL]
    assert counts == sorted(counts, reverse=True), dict(zip(FUNNEL, counts, strict=True))
    # the failed pick was selected (it was picked) but never signed; its runner-up took its place
    assert (report.summary["selected"], report.summary["signed"], report.summary["written"]) == (4, 3, 3)


def test_when_a_promoted_earlier_candidate_cannot_be_made_the_next_one_is(tmp_path, monkeypatch):
    # keep 1 of 3: the pick's file is deleted and remaking it fails; so does making the runner-up
    # (judged in the first run, never written); the third is made and written, so the row still
    # has its image.
    cfg = make_job(tmp_path, num_candidates=3, keep=1, seed=6, max_failed_fraction=0.5)
    first = {(r["id"], r["candidate"]): r for r in results(run_job(cfg, backend="in-process"))}
    pick = next(k for k in first if k[0] == "a" and first[k]["rank"] == 1)
    second = next(k for k in first if k[0] == "a" and first[k]["rank"] == 2)
    third = next(k for k in first if k[0] == "a" and first[k]["rank"] == 3)
    (Path(cfg.job.output) / first[pick]["path"]).unlink()
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"candidate.error={first[pick]['seed']}|{first[second]['seed']}")
    report = run_job(cfg, backend="in-process")
    rows = {(r["id"], r["candidate"]): r for r in results(report)}
    assert rows[pick]["status"] == rows[second]["status"] == "error"
    assert rows[third]["status"] == "written" and rows[third]["rank"] == 1
    assert verify_output(report.output_dir) == ([], 3)


class _ModelClock:
    """`time.perf_counter` of the generation stage, moved on only by model work: each call of
    the diffusion pipeline on a batch costs `ms` per candidate, so model time is exact."""

    def __init__(self, monkeypatch, ms: float):
        from pipeline.stages import generate

        self.now = 0.0
        monkeypatch.setattr(generate.time, "perf_counter", lambda: self.now)
        run = generate.Generator._generate

        def timed(gen, cands):
            self.now += ms * len(cands) / 1000
            return run(gen, cands)

        monkeypatch.setattr(generate.Generator, "_generate", timed)


def test_every_attempt_of_a_split_batch_is_paid_for(tmp_path, monkeypatch):
    """A batch whose model ran and then failed (out of memory at the end) is split and retried:
    each candidate's model time is its share of every failed batch it was in plus its own last
    attempt, and the GPU-seconds and cost count them all."""
    _ModelClock(monkeypatch, ms=100)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", "candidate.oom_after_model")
    cfg = make_job(tmp_path, num_candidates=2, keep=1, extra="[cost]\ngpu_hour_usd = 3.6\n")
    report = run_job(cfg, backend="in-process")
    rows = results(report)
    assert report.exit_code == EXIT_OK and all(r["batch_size"] == 1 and r["attempt"] >= 2 for r in rows)
    # every attempt costs each candidate in it 100 ms (a batch of n: n × 100 ms, shared)
    assert [r["ms_generate"] for r in rows] == pytest.approx([100.0 * r["attempt"] for r in rows])
    for r in rows:
        assert r["gpu_s"] == pytest.approx((r["ms_generate"] + r["ms_score"] + r["ms_moderate"]) / 1000)
        assert r["cost_usd"] == pytest.approx(r["gpu_s"] / 1000)
    assert report.summary["gpu_s_total"] == pytest.approx(sum(r["gpu_s"] for r in rows), abs=1e-5)


def test_a_candidate_that_fails_every_attempt_is_paid_for_but_not_generated(tmp_path, monkeypatch):
    _ModelClock(monkeypatch, ms=100)
    cfg = make_job(tmp_path, num_candidates=2, keep=1, seed=5, max_failed_fraction=0.5)
    bad = derive_seed("job", 5, "b", 0)
    monkeypatch.setenv("ASSET_PIPELINE_FAULTS", f"candidate.error={bad}")
    report = run_job(cfg, backend="in-process")
    rows = results(report)
    failed = next(r for r in rows if r["seed"] == bad)
    assert failed["status"] == "error" and failed["path"] is None and failed["attempt"] >= 2
    # the failed candidate's attempts cost too, as its batch mates' did; a batch that ran once, once
    assert [r["ms_generate"] for r in rows] == pytest.approx([100.0 * r["attempt"] for r in rows])
    assert failed["gpu_s"] is not None and any(r["attempt"] == 1 for r in rows)
    # the funnel counts images: the failed candidate is not "generated"
    assert (report.summary["generated"], report.summary["error"]) == (5, 1)
