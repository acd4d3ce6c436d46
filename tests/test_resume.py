"""Exactly-once output across reruns (in-process, fast): one rule for what is done, what is
listed and what may be deleted; --fresh never destroys before the job is known to be good;
leftovers of killed runs never break a later run."""

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import EXIT_OK, JobError, ManifestError, SignerError
from pipeline.provenance.demo_ca import make_demo_credentials
from pipeline.review.verify import verify_output
from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from pipeline.storage.layout import RESULTS
from tests.helpers import write_job

ROWS = {"id": ["a", "b", "c"], "prompt": ["a mug", "a shoe", "a lamp"]}
FAST = "[generate]\nsteps = 1\nwidth = 64\nheight = 64\nbatch_size = 4\n"


def results(out: Path) -> dict:
    return {(r["id"], r["candidate"]): r for r in pq.read_table(out / RESULTS).to_pylist()}


def job_with(tmp_path: Path, rows: dict, extra: str = "", **kw) -> Path:
    return write_job(tmp_path, rows, styles=None, extra=FAST + extra, **kw)


def images(out: Path) -> set[str]:
    return {p.relative_to(out).as_posix() for p in (out / "images").rglob("*") if p.is_file()}


def test_edit_then_revert_a_prompt_keeps_every_listed_file(tmp_path):
    job = job_with(tmp_path, ROWS)
    out = run_job(load_job(job), backend="in-process").output_dir
    first = results(out)
    edited = dict(ROWS, prompt=["a mug", "a red shoe", "a lamp"])
    middle = run_job(load_job(job_with(tmp_path, edited)), backend="in-process")
    assert middle.exit_code == EXIT_OK and middle.summary["this_run"] == {"written": 1}
    assert results(out)["b", 0]["status"] == "written" and verify_output(out) == ([], 3)
    again = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")  # reverted
    assert again.exit_code == EXIT_OK
    table = results(out)
    assert table["b", 0]["item_id"] == first["b", 0]["item_id"]
    assert table["b", 0]["status"] == "written" and (out / table["b", 0]["path"]).is_file()
    assert verify_output(out) == ([], 3)


def test_a_listed_file_that_is_gone_is_regenerated(tmp_path):
    out = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process").output_dir
    gone = results(out)["b", 0]
    pixels = np.asarray(Image.open(out / gone["path"]))
    (out / gone["path"]).unlink()
    again = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {"written": 1}
    again_pixels = np.asarray(Image.open(out / results(out)["b", 0]["path"])).astype(int)
    assert np.abs(again_pixels - pixels).max() <= 2  # same seed, alone now: within 2/255 (DESIGN.md)
    assert verify_output(out) == ([], 3)


def test_rows_into_a_folder_with_other_rows_shards_keeps_their_images(tmp_path):
    # A killed full run: shards committed, no results.parquet yet.
    job = job_with(tmp_path, ROWS)
    out = run_job(load_job(job), backend="in-process").output_dir
    (out / RESULTS).unlink()
    before = images(out)
    with pytest.raises(JobError, match="holds results of other rows"):
        run_job(load_job(job), backend="in-process", rows=("a",))
    assert images(out) == before
    assert run_job(load_job(job), backend="in-process").exit_code == EXIT_OK
    assert verify_output(out) == ([], 3)


def test_leftover_temp_folders_and_files_are_cleaned_safely(tmp_path):
    job = job_with(tmp_path, ROWS)
    out = run_job(load_job(job), backend="in-process").output_dir
    killed_signer = out / ".tmp-demo-signer-abc123"  # a killed demo-signer creation
    killed_signer.mkdir()
    (killed_signer / "signer.key").write_text("half")
    (out / "images" / "zz").mkdir()
    (out / "images" / "zz" / ".tmp-x.png-1a2b").write_bytes(b"torn")
    (out / "_shards" / ".tmp-1-part-000009.parquet").write_bytes(b"torn")
    again = run_job(load_job(job), backend="in-process")
    assert again.exit_code == EXIT_OK
    assert not list(out.rglob(".tmp-*"))
    assert verify_output(out) == ([], 3)


@pytest.mark.parametrize("breakage", ["manifest", "signer"])
def test_fresh_with_a_bad_job_destroys_nothing(tmp_path, breakage):
    job = job_with(tmp_path, ROWS)
    out = run_job(load_job(job), backend="in-process").output_dir
    before = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
              and p.name != ".lock"}
    if breakage == "manifest":
        bad = job_with(tmp_path, {"id": ["a", "a"], "prompt": ["x", "y"]})
        expected = ManifestError
    else:
        good, other = make_demo_credentials(tmp_path / "c1"), make_demo_credentials(tmp_path / "c2")
        bad = job_with(tmp_path, ROWS, extra=f'[signer]\nmode = "files"\ncert_chain = "{good.cert_chain}"\n'
                                             f'private_key = "{other.private_key}"\n')
        expected = SignerError
    with pytest.raises(expected):
        run_job(load_job(bad), backend="in-process", fresh=True)
    after = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()
             and p.name != ".lock"}
    assert after == before


def test_passthrough_table_unchanged_by_resume(tmp_path):
    rows = dict(ROWS, sku=pa.array(["1", "2", "3"]))
    job = job_with(tmp_path, rows)
    out = run_job(load_job(job), backend="in-process").output_dir
    first = pq.read_table(out / RESULTS)
    run_job(load_job(job), backend="in-process")
    assert pq.read_table(out / RESULTS).equals(first)


def test_rows_into_a_folder_holding_only_other_rows_results_is_refused(tmp_path):
    # No committed outcomes (removed by hand), but results.parquet and images of other rows: still refused.
    import shutil

    job = job_with(tmp_path, ROWS)
    out = run_job(load_job(job), backend="in-process").output_dir
    shutil.rmtree(out / "_shards")
    shutil.rmtree(out / "_state")
    before = images(out)
    with pytest.raises(JobError, match="holds results of other rows"):
        run_job(load_job(job), backend="in-process", rows=("a",))
    assert images(out) == before


def test_a_run_planned_in_chunks_of_one_row_judges_and_resumes_as_one_planned_whole(tmp_path, monkeypatch):
    """The plan, the pending work and the results table are made a chunk of manifest rows at a
    time. Chunks of one row (every row a boundary) give the same results as one chunk, across a
    resume that judges new candidates with a row's earlier ones."""
    import pipeline.plan.build

    tables = {}
    for chunk_rows in (1, 10_000):
        monkeypatch.setattr(pipeline.plan.build, "CHUNK_ROWS", chunk_rows)
        folder = tmp_path / f"chunks-{chunk_rows}"
        run_job(load_job(job_with(folder, ROWS, num_candidates=2, keep=1)), backend="in-process")
        more = run_job(load_job(job_with(folder, ROWS, num_candidates=3, keep=2)), backend="in-process")
        assert more.exit_code == EXIT_OK and sum(more.summary["this_run"].values()) == 3  # candidate 2 of each row
        assert verify_output(more.output_dir) == ([], 6)
        tables[chunk_rows] = pq.read_table(more.output_dir / RESULTS)
    judged = ["id", "candidate", "item_id", "seed", "status", "reason", "selected", "rank", "path"]
    assert tables[1].select(judged).equals(tables[10_000].select(judged))
    # Units never span chunks, so the batches differ: scores agree to float noise.
    assert np.allclose(tables[1]["clip_score"].to_numpy(), tables[10_000]["clip_score"].to_numpy(), atol=1e-3)
    assert tables[1].num_rows == 9 and tables[1]["selected"].to_pylist().count(True) == 6
