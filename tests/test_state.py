"""The committed state at scale: outcomes cut into ranges of item ids, shards consolidated into
a few files after each run, a kill at any point of that leaving an output the next run reads
right, and folders written before consolidation existed still read."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.errors import EXIT_OK
from pipeline.review.verify import verify_output
from pipeline.run import keyspace
from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from pipeline.storage.layout import EMBEDDINGS, RESULTS, SHARDS, STATE, STATE_CURRENT
from tests.helpers import as_older_release, write_job

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"id": ["a", "b", "c"], "prompt": ["a mug", "a shoe", "a lamp"]}
MORE = {"id": ["a", "b", "c", "d"], "prompt": ["a mug", "a shoe", "a lamp", "a vase"]}
# Fast images, and a shard per row: a run leaves several shards (and sidecars) to consolidate.
FAST = "[generate]\nsteps = 1\nwidth = 64\nheight = 64\nbatch_size = 4\n[output]\nshard_rows = 1\n"
SAME = ["id", "candidate", "item_id", "status", "reason_code", "path", "sha256", "rank"]


def job_with(folder: Path, rows: dict) -> Path:
    return write_job(folder, rows, styles=None, extra=FAST, num_candidates=2, keep=1)


def current(out: Path) -> dict:
    return json.loads((out / STATE_CURRENT).read_text())


def parts(out: Path, folder: str) -> list[Path]:
    return sorted((out / folder).glob("part-*.parquet")) if (out / folder).exists() else []


def results(out: Path) -> list[dict]:
    return pq.read_table(out / RESULTS, columns=SAME).to_pylist()


def test_a_run_leaves_its_outcomes_in_a_few_range_files_and_resumes_from_them(tmp_path):
    out = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process").output_dir
    state = current(out)
    assert parts(out, SHARDS) == parts(out, EMBEDDINGS) == []  # its shards and sidecars folded in
    assert state["outcomes"] == state["committed"] == 6 and state["through"] >= 1  # two shards or more
    files = sorted(p.relative_to(out).as_posix() for p in (out / STATE).rglob("*") if p.is_file())
    assert files == sorted([STATE_CURRENT, *state["parts"].values(), *state["embeddings"].values()])
    again = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {}  # nothing regenerated
    assert current(out) == state  # nothing new: nothing rewritten
    assert verify_output(out) == ([], 3)


def test_a_run_never_reads_back_the_shards_it_committed(tmp_path, monkeypatch):
    from pipeline.run import state as state_module

    read = []
    original = state_module.read_parquet
    monkeypatch.setattr(state_module, "read_parquet", lambda out, rel, *a, **k: read.append(rel) or original(
        out, rel, *a, **k))
    report = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")
    assert report.exit_code == EXIT_OK and current(report.output_dir)["committed"] == 6
    assert read == []  # each shard was taken in from memory as it committed
    # a shard it did not commit (a killed run's) is read: here, the same outcomes again
    (report.output_dir / SHARDS / "part-000099-0killed0.parquet").write_bytes(
        (tmp_path / "out" / "results.parquet").read_bytes())
    again = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")
    assert again.summary["this_run"] == {} and read == [f"{SHARDS}/part-000099-0killed0.parquet"]
    assert current(report.output_dir)["committed"] == 12 and not parts(report.output_dir, SHARDS)


def test_outcomes_cut_into_many_ranges_give_the_same_results_and_reuse_untouched_ranges(tmp_path, monkeypatch):
    one = run_job(load_job(job_with(tmp_path / "one", ROWS)), backend="in-process").output_dir
    monkeypatch.setattr(keyspace, "RANGE_OUTCOMES", 1)  # sixteen ranges for a handful of outcomes
    many = run_job(load_job(job_with(tmp_path / "many", ROWS)), backend="in-process").output_dir
    unsigned = [c for c in SAME if c != "sha256"]  # each output signs with its own demo CA
    assert pq.read_table(many / RESULTS, columns=unsigned) == pq.read_table(one / RESULTS, columns=unsigned)
    first = current(many)
    assert first["digits"] == 1 and len(first["parts"]) == len({r["item_id"][0] for r in results(many)})
    # a new row: only the ranges its candidates fall in are written again
    grown = run_job(load_job(job_with(tmp_path / "many", MORE)), backend="in-process")
    assert grown.summary["this_run"] == {"written": 1, "rejected": 1}
    second = current(many)
    touched = {r["item_id"][0] for r in results(many) if r["id"] == "d"}
    assert {p for p, rel in second["parts"].items() if rel != first["parts"].get(p)} == touched
    assert second["committed"] == 8 and second["outcomes"] == 8
    left = {p.relative_to(many).as_posix() for p in (many / STATE).rglob("*") if p.is_file()}
    assert left == {STATE_CURRENT, *second["parts"].values(), *second["embeddings"].values()}  # old ones gone
    assert verify_output(many) == ([], 4)


def test_a_generation_cut_coarser_than_the_run_needs_is_read_by_range_and_recut_when_it_changes(tmp_path,
                                                                                                   monkeypatch):
    out = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process").output_dir
    assert current(out)["digits"] == 0 and len(current(out)["parts"]) == 1
    before = results(out)
    monkeypatch.setattr(keyspace, "RANGE_OUTCOMES", 1)  # the output "grew": sixteen ranges now
    again = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")
    assert again.summary["this_run"] == {} and results(out) == before  # one file read a range at a time
    assert current(out)["digits"] == 0  # nothing new committed: nothing rewritten
    grown = run_job(load_job(job_with(tmp_path, MORE)), backend="in-process")
    assert grown.summary["this_run"] == {"written": 1, "rejected": 1}
    state = current(out)
    assert state["digits"] == 1 and state["outcomes"] == 8 and set(state["parts"]) == {
        r["item_id"][0] for r in results(out)}
    assert verify_output(out) == ([], 4)


def test_a_folder_from_before_consolidation_resumes_and_is_consolidated(tmp_path):
    out = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process").output_dir
    before = results(out)
    shards = as_older_release(out)
    assert shards and not (out / STATE).exists()
    again = run_job(load_job(job_with(tmp_path, ROWS)), backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {}
    assert results(out) == before and parts(out, SHARDS) == [] and current(out)["outcomes"] == 6


def cli_run(job: Path, out: Path, faults: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ASSET_PIPELINE_FAULTS"}
    if faults:
        env["ASSET_PIPELINE_FAULTS"] = faults
    return subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--output", str(out), "--in-process"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
@pytest.mark.parametrize("point", ["consolidate.kill_before_manifest", "consolidate.kill_after_manifest",
                                   "consolidate.kill_mid_clean"])
def test_a_kill_while_consolidating_loses_nothing_and_counts_nothing_twice(tmp_path, point):
    out = tmp_path / "out"
    assert cli_run(job_with(tmp_path, ROWS), out).returncode == 0
    job = job_with(tmp_path, MORE)
    killed = cli_run(job, out, point)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    expected = results(out)  # the killed run's results were committed before it consolidated
    rerun = cli_run(job, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["this_run"] == {} and summary["written"] == 4  # nothing lost: nothing to make again
    assert results(out) == expected
    state = current(out)
    assert state["committed"] == state["outcomes"] == 8  # nothing counted twice
    assert parts(out, SHARDS) == parts(out, EMBEDDINGS) == []
    left = {p.relative_to(out).as_posix() for p in (out / STATE).rglob("*") if p.is_file()}
    assert left == {STATE_CURRENT, *state["parts"].values(), *state["embeddings"].values()}
    assert verify_output(out) == ([], 4)


def test_on_s3_ranges_are_listed_by_key_prefix_and_consolidated(tmp_path, s3, monkeypatch):
    from pipeline.storage.store import Output
    from tests.test_storage import s3_job

    monkeypatch.setattr(keyspace, "RANGE_OUTCOMES", 1)  # sixteen ranges: each listed by its own key prefix
    rows = {"id": ["a", "b", "c"], "prompt": ["a mug", "a shoe", "a lamp"]}
    cfg = load_job(s3_job(tmp_path, s3, rows, extra="[output]\nshard_rows = 1\n"))
    cfg = cfg.replace("job", output=f"s3://{s3.bucket}/runs/nightly")
    first = run_job(cfg, backend="in-process")
    assert first.exit_code == EXIT_OK
    out = Output(f"s3://{s3.bucket}/runs/nightly")
    state = json.loads(out.get(STATE_CURRENT))
    assert state["digits"] == 1 and state["committed"] == 3 and not out.files(SHARDS)
    assert verify_output(out.where()) == ([], 3)
    gone = pq.read_table(out.open(RESULTS), columns=["path"])["path"].to_pylist()[0]
    out.delete(gone)  # a file of one range gone: only its candidate runs again
    again = run_job(cfg, backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {"written": 1}
    assert out.exists(gone) and json.loads(out.get(STATE_CURRENT))["committed"] == 4


def test_a_consolidation_with_nothing_new_leaves_the_generation_in_force(tmp_path):
    """A compaction that took in no shard visits every range without writing one: committing it
    anyway must not put a generation of no ranges in force (every outcome would be lost)."""
    from bench.scale import synthesize, write_inputs
    from pipeline.plan.build import write_plan
    from pipeline.run.compact import write_results
    from pipeline.run.consolidate import Consolidation
    from pipeline.run.joined import Joined
    from pipeline.run.state import State
    from pipeline.spec.manifest import load_inputs
    from pipeline.storage.store import Output

    cfg = load_job(write_inputs(tmp_path, 200, 2))
    plan = write_plan(load_inputs(cfg), cfg, tmp_path / "work" / "plan.parquet")
    synthesize(Path(cfg.job.output), plan, cfg.output.shard_rows)
    out = Output(cfg.job.output)
    for _ in range(2):  # the first compaction consolidates; the second has nothing new
        state = State(out, tmp_path / "work", expected=plan.num_rows)
        consolidation = Consolidation(state, out)
        joined = Joined(state, [plan], tmp_path / "work", visit=consolidation)
        assert write_results(joined.chunks(), out)["pending"] == 0
        joined.close()
        consolidation.commit()
        state.close()
    assert current(Path(out.root))["outcomes"] == 400


def test_a_spill_keeps_a_number_a_batch_to_find_its_keys(tmp_path):
    """A join writes one batch a range and plan chunk: at 100M candidates about four million
    (4,096 ranges × 1,000 chunks). The spill's index of them must cost a few bytes a batch (a
    dict of lists of batch numbers under (range, chunk) keys took 250: a gigabyte there)."""
    import tracemalloc

    import pyarrow as pa

    from pipeline.storage.spill import Spill

    spill = Spill(tmp_path / "pieces.arrow", pa.schema([("n", pa.int64())]), compressed=False)
    one = pa.table({"n": [7]})
    tracemalloc.start()
    for key in range(40_000):
        spill.add(key << 32 | key % 100, one)
    assert spill.read(5 << 32 | 5)["n"].to_pylist() == [7] and spill.read(5 << 32 | 6).num_rows == 0
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    spill.close()
    assert peak < 40_000 * 30, f"{peak / 40_000:.0f} bytes a batch"
