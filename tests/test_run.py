"""The run contract, in-process (fast): one row per candidate, signed files, verify, resume."""

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import EXIT_OK
from pipeline.review.verify import verify_output
from pipeline.run.job import run_job
from pipeline.run.summary import summarize
from pipeline.spec import schema, vocabulary
from pipeline.spec.load import load_job
from pipeline.storage.layout import SHARDS, STATE, STATE_CURRENT
from tests.helpers import as_older_release, save_cutout, write_job

ROWS = {
    "id": ["mug", "blocked", "staged", "plain"],
    "prompt": ["a red mug on a table", "an nsfw poster", "a mug", "Ein Fahrrad im Schnee 🚲"],
    "style": ["studio", None, None, "brand"],
    "seed": pa.array([7, None, None, None], pa.int64()),
    "product_image": [None, None, "cutout.png", None],
    "sku": ["S-1", "S-2", "S-3", "S-4"],
    "launch": pa.array([1, 2, 3, 4], pa.int32()),
    "tags": pa.array([["new"], [], None, ["eu", "sale"]], pa.list_(pa.string())),
}
EXTRA = """
[filter]
blocked_terms = ["nsfw"]
[generate]
steps = 2
width = 64
height = 64
batch_size = 3
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    save_cutout(folder / "cutout.png")
    cfg = load_job(write_job(folder, ROWS, extra=EXTRA, num_candidates=2, keep=1))
    report = run_job(cfg, backend="in-process")
    return cfg, report, pq.read_table(report.output_dir / "results.parquet")


def test_one_row_per_candidate_with_status(finished):
    _, report, table = finished
    assert report.exit_code == EXIT_OK
    rows = table.to_pylist()
    assert [(r["id"], r["candidate"]) for r in rows] == [(i, k) for i in ROWS["id"] for k in range(2)]
    assert {r["status"] for r in rows} <= set(vocabulary.STATUSES)
    assert all(r["status"] for r in rows)
    assert {r["reason"].split(":")[0] for r in rows if r["status"] == "rejected"} <= set(vocabulary.REJECT_REASONS)
    by_id = {}
    for r in rows:
        by_id.setdefault(r["id"], []).append(r)
    for rid in ("mug", "staged", "plain"):
        assert sum(r["selected"] for r in by_id[rid]) == 1
        assert sorted(r["status"] for r in by_id[rid]) == ["rejected", "written"]
    blocked = by_id["blocked"]
    assert all(r["status"] == "rejected" and r["reason"].startswith("prompt_blocked") for r in blocked)
    assert all(r["ms_generate"] is None and r["path"] is None for r in blocked)


def test_results_carry_the_reason_code_and_the_counts_read_it(finished):
    # Code reads a reason's code from `reason_code`, never from the text of `reason`.
    _, report, table = finished
    rows = table.to_pylist()
    with_reason = [r for r in rows if r["reason"]]
    assert {r["reason_code"] for r in with_reason} >= {vocabulary.PROMPT_BLOCKED, vocabulary.NOT_SELECTED}
    assert all(r["reason_code"] in vocabulary.REJECT_REASONS + vocabulary.ERROR_STAGES for r in with_reason)
    assert all(r["reason"] == r["reason_code"] or r["reason"].startswith(f"{r['reason_code']}: ") for r in with_reason)
    assert all(r["reason_code"] is None for r in rows if not r["reason"])
    summary = json.loads((report.output_dir / "summary.json").read_text())
    assert summary["reasons"] == dict(Counter(r["reason_code"] for r in with_reason))


def test_reason_counts_go_by_code_not_by_the_words_of_the_message():
    # The runner's failure sentences have no "<code>:" prefix, and a message may hold colons
    # anywhere: the counts take the code as recorded.
    reasons = ["worker died on this unit 4 times, the last time with no other unit beside it: OOM",
               "unit failed: RuntimeError: boom", "prompt_blocked: term 'a: b'", "not_selected"]
    codes = [vocabulary.UNIT_ERROR, vocabulary.UNIT_ERROR, vocabulary.PROMPT_BLOCKED, vocabulary.NOT_SELECTED]
    rows = [{"status": vocabulary.ERROR if c == vocabulary.UNIT_ERROR else vocabulary.REJECTED, "reason": r,
             "reason_code": c} for r, c in zip(reasons, codes, strict=True)]
    summary = summarize(pa.Table.from_pylist(rows, schema=schema.RESULTS_SCHEMA))
    assert summary["reasons"] == {vocabulary.UNIT_ERROR: 2, vocabulary.PROMPT_BLOCKED: 1, vocabulary.NOT_SELECTED: 1}


def test_results_columns_and_passthrough(finished):
    cfg, _, table = finished
    for name in ("id", "candidate", "item_id", "prompt", "style", "seed", "model", "steps",
                 "guidance_scale", "width", "height", "clip_score", "image_unsafe_score", "status",
                 "reason", "selected", "path", "sha256", "c2pa_state", "ms_generate", "ms_sign"):
        assert name in table.column_names
    assert table["sku"].to_pylist() == [s for s in ROWS["sku"] for _ in range(2)]
    assert table.schema.field("launch").type == pa.int32()
    assert table.schema.field("tags").type == pa.list_(pa.string())
    assert table["tags"].to_pylist()[6:] == [["eu", "sale"]] * 2
    written = table.filter(pa.compute.equal(table["status"], "written")).to_pylist()
    assert written
    for r in written:
        assert r["path"] == f"images/{r['item_id'][:2]}/{r['item_id']}.png"
        assert r["c2pa_state"] == "Trusted" and r["sha256"] and r["bytes"] > 0
        assert 0 <= r["clip_score"] <= 100 and r["clip_model"]
        assert r["model"] == cfg.models.diffusion
    staged = [r for r in written if r["id"] == "staged"][0]
    assert staged["mode"] == "inpaint"
    # The product's own pixels are pasted back exactly (staging keeps the product).
    out = np.asarray(Image.open(Path(cfg.job.output) / staged["path"]))
    assert (out[33, 32] == [20, 200, 20]).all()


def test_verify_passes_then_catches_tampering_and_strays(finished):
    cfg, _, table = finished
    out = Path(cfg.job.output)
    assert verify_output(out) == ([], 3)
    path = out / [p for p in table["path"].to_pylist() if p][0]
    original = path.read_bytes()
    try:
        data = bytearray(original)
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
        stray = out / "images" / "zz" / "stray.png"
        stray.parent.mkdir(parents=True)
        stray.write_bytes(original)
        problems, _ = verify_output(out)
        text = "\n".join(problems)
        assert "sha256 differs" in text and "C2PA" in text and "stray.png: file not listed" in text
    finally:
        path.write_bytes(original)
        stray.unlink()
        stray.parent.rmdir()
    assert verify_output(out)[0] == []


def test_rerun_resumes_without_regenerating(finished):
    cfg, first, table = finished
    state = (Path(cfg.job.output) / STATE_CURRENT).read_bytes()
    again = run_job(cfg, backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {}
    assert not list((Path(cfg.job.output) / SHARDS).iterdir())  # nothing new committed
    assert (Path(cfg.job.output) / STATE_CURRENT).read_bytes() == state  # nor consolidated again
    table2 = pq.read_table(again.output_dir / "results.parquet")
    assert table2["sha256"].to_pylist() == table["sha256"].to_pylist()
    assert table2["run_id"].to_pylist() == table["run_id"].to_pylist()


def test_fresh_starts_over(finished):
    cfg, _, table = finished
    again = run_job(cfg, backend="in-process", fresh=True)
    table2 = pq.read_table(again.output_dir / "results.parquet")
    assert set(table2["run_id"].drop_null().to_pylist()) == {again.run_id}
    assert table2["item_id"].to_pylist() == table["item_id"].to_pylist()
    assert table2["status"].to_pylist() == table["status"].to_pylist()  # same inputs, same outcome
    assert verify_output(again.output_dir)[0] == []


def test_resume_over_shards_from_a_version_without_a_newer_column(finished):
    # An output folder started by an older release: its shards lack `writer`. Rerunning with
    # this one resumes (nothing regenerated) and fills the missing column with nulls.
    cfg, _, _ = finished
    shard_dir = Path(cfg.job.output) / SHARDS
    table = pq.read_table(Path(cfg.job.output) / "results.parquet")
    as_older_release(Path(cfg.job.output), drop=("writer",))
    again = run_job(cfg, backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {}  # nothing regenerated
    assert not list(shard_dir.iterdir())  # the shard consolidated
    table2 = pq.read_table(again.output_dir / "results.parquet")
    assert table2["writer"].null_count == table2.num_rows
    assert table2["sha256"].to_pylist() == table["sha256"].to_pylist()


def test_results_and_run_record_name_the_models_that_ran(finished):
    import json

    cfg, report, table = finished
    generated = table.filter(pa.compute.is_valid(table["ms_generate"])).to_pylist()
    assert cfg.models.scheduler is None  # not configured: the results still say which one ran
    assert {r["scheduler"] for r in generated} == {"EulerDiscreteScheduler"}
    assert {r["moderation_model"] for r in generated} == {cfg.models.moderation}
    assert {r["clip_model"] for r in generated} == {cfg.models.clip}
    blocked = [r for r in table.to_pylist() if r["id"] == "blocked"]  # stopped at the prompt check
    assert blocked and all(r["scheduler"] is r["clip_model"] is r["moderation_model"] is None for r in blocked)
    run = json.loads((report.output_dir / "_runs" / f"{report.run_id}.json").read_text())
    assert run["versions"]["torch"] and run["versions"]["diffusers"] and run["versions"]["c2pa-python"]
    models = run["models"]
    assert models["diffusion"] == {"spec": "embedded:tiny-sd", "revision": None,
                                   "fingerprint": "embedded:tiny-sd@v1"}
    assert models["clip"]["fingerprint"] == "embedded:tiny-clip@v1"
    assert models["moderation"]["fingerprint"] == "embedded:tiny-nsfw@v1"


def test_an_image_a_killed_run_left_is_kept_when_it_verifies_and_replaced_when_it_does_not(tmp_path):
    """Files written but never committed (a run killed between its write and its shard, or on a
    bucket a run paused past its lease while another took over): the rerun's write creates an
    image only where none is, keeps one that verifies (the same item's), replaces one that does not."""
    import shutil

    cfg = load_job(write_job(tmp_path, {"id": ["a", "b"], "prompt": ["a red mug", "a lamp"]}, styles=None,
                             num_candidates=1, keep=1))
    first = run_job(cfg, backend="in-process")
    rows = pq.read_table(first.output_dir / "results.parquet").to_pylist()
    kept, torn = (first.output_dir / r["path"] for r in rows)
    before = kept.read_bytes()
    torn.write_bytes(b"not an image any more")
    for name in (SHARDS, STATE, "results.parquet", "summary.json"):  # as if no outcome was ever committed
        target = first.output_dir / name
        shutil.rmtree(target) if target.is_dir() else target.unlink()
    again = run_job(cfg, backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {"written": 2}
    after = {r["id"]: r for r in pq.read_table(again.output_dir / "results.parquet").to_pylist()}
    assert kept.read_bytes() == before and after["a"]["sha256"] == rows[0]["sha256"]  # kept, not signed anew
    assert torn.read_bytes() != b"not an image any more" and after["b"]["c2pa_state"] is not None
    assert verify_output(again.output_dir)[0] == []
