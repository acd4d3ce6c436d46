"""Kill the driver with SIGKILL at several points, or kill a generate actor, through the real
Ray runner; rerunning the same command must finish with exactly one row per candidate,
intact signed files, no strays, and nothing committed twice."""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import write_job

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROWS = {"id": [f"r{i}" for i in range(6)], "prompt": [f"product photo {i}" for i in range(6)]}
# One row per block and a shard every two rows: several shards, so kills land in between.
EXTRA = "[generate]\nsteps = 1\nwidth = 64\nheight = 64\nbatch_size = 1\n[output]\nshard_rows = 2\n"
# GPU nodes write on separate writer actors, fed by reference: the same contract must hold.
WRITERS = EXTRA + "[cluster]\nwrite_actors = 1\n"


def run(job: Path, out: Path | str, faults: str | None = None, *args: str,
        **env_vars: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "ASSET_PIPELINE_FAULTS"} | env_vars
    if faults:
        env["ASSET_PIPELINE_FAULTS"] = faults
    return subprocess.run([sys.executable, "-m", "pipeline", "run", str(job), "--output", str(out), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


def assert_complete(where: Path | str, candidates: int, retried: tuple[str, ...] = ()) -> None:
    """Every candidate once in the results; in the shards, once, or twice for `retried` errors."""
    from pipeline.run.shards import ShardStore
    from pipeline.storage.records import read_results
    from pipeline.storage.store import Output

    out = Output(str(where))
    table = read_results(out)
    assert table.num_rows == candidates
    assert len(set(table["item_id"].to_pylist())) == candidates
    assert all(s in ("written", "rejected") for s in table["status"].to_pylist())
    # every outcome ever committed, counted by the consolidated state (the shards are folded in)
    state = json.loads(out.get("_state/current.json"))
    assert not ShardStore(out).paths() and state["outcomes"] == candidates
    assert state["committed"] == candidates + len(retried), "a candidate was committed twice"
    verify = subprocess.run([sys.executable, "-m", "pipeline", "verify", out.where()], cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr  # no strays, no torn files
    assert not out.local or not list(Path(out.root).rglob(".tmp-*"))


@pytest.mark.parametrize("point, extra", [
    ("driver.kill_before_shard=1", EXTRA), ("driver.kill_mid_shard=2", EXTRA), ("driver.kill_after_shard=2", EXTRA),
    ("driver.kill_before_compact", EXTRA),
    ("driver.kill_before_shard=1", WRITERS), ("driver.kill_after_shard=2", WRITERS),
], ids=["before_shard", "mid_shard", "after_shard", "before_compact", "writers-before_shard", "writers-after_shard"])
def test_driver_killed_then_rerun_completes(tmp_path, point, extra):
    job = write_job(tmp_path, ROWS, styles=None, extra=extra, num_candidates=2, keep=1)
    out = tmp_path / "out"
    first = run(job, out, point)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert not (out / "results.parquet").exists()
    second = run(job, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_complete(out, 12)


def test_driver_killed_while_applying_decisions_then_a_plain_rerun_finishes_them(tmp_path):
    """Decisions are recorded before any work: a run applying them that is killed part way is
    finished by the plain rerun, and the file applied again changes nothing."""
    import json

    job = write_job(tmp_path, ROWS, styles=None, extra=EXTRA, num_candidates=2, keep=1)
    out = tmp_path / "out"
    assert run(job, out).returncode == 0
    picks = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist() if r["status"] == "written"}
    first_run = {r["id"]: r["run_id"] for r in picks.values()}
    decisions = tmp_path / "decisions.json"
    decisions.write_text(json.dumps([{"item_id": picks[f"r{i}"]["item_id"], "decision": "reject"} for i in range(4)]
                                    + [{"item_id": picks["r5"]["item_id"], "decision": "refine", "prompt": "at dusk",
                                        "strength": 1.0}]))  # one step: a refinement needs all of it
    killed = run(job, out, "driver.kill_after_shard=1", "--decisions", str(decisions))
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    rerun = run(job, out)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    table = pq.read_table(out / "results.parquet").to_pylist()
    rows = {(r["id"], r["candidate"]): r for r in table}
    for i in range(4):
        gone = rows[f"r{i}", picks[f"r{i}"]["candidate"]]
        assert gone["reason"] == "reviewer_rejected" and gone["path"] is None
        assert sum(r["status"] == "written" for (rid, _), r in rows.items() if rid == f"r{i}") == 1
    (child,) = [r for r in table if r["parent"] == picks["r5"]["item_id"]]
    assert child["status"] == "written"
    assert len(table) == len({r["item_id"] for r in table}) == 13  # 12 candidates and the refinement
    assert all(r["status"] in ("written", "rejected") for r in table)
    # a row no decision touched: committed once, by the first run, never again
    assert {r["run_id"] for r in table if r["id"] == "r4"} == {first_run["r4"]}
    verify = subprocess.run([sys.executable, "-m", "pipeline", "verify", str(out)], cwd=ROOT, capture_output=True,
                            text=True, timeout=300)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert not list(out.rglob(".tmp-*"))
    again = run(job, out, None, "--decisions", str(decisions))
    assert again.returncode == 0 and pq.read_table(out / "results.parquet").to_pylist() == table


@pytest.mark.parametrize("fault, extra", [("actor.exit_once", EXTRA), ("actor.exit_once", WRITERS),
                                          ("writer.exit_once", WRITERS)],
                         ids=["generate-actor", "generate-actor-with-writers", "writer"])
def test_killed_actor_is_restarted_and_its_unit_retried(tmp_path, fault, extra):
    job = write_job(tmp_path, ROWS, styles=None, extra=extra, num_candidates=1, keep=1)
    marker = tmp_path / "actor-died"
    result = run(job, tmp_path / "out", f"{fault}={marker}")
    assert marker.exists(), "the fault never fired"
    assert result.returncode == 0, result.stderr[-3000:]
    assert_complete(tmp_path / "out", 6)


def test_unit_that_kills_its_actor_every_time_becomes_error_rows_then_rerun_completes(tmp_path):
    # A poison unit: Ray restarts the actor and retries it a few times, then its candidates are
    # recorded as errors (not dropped, no crash loop) and every other row is written.
    rows = {**ROWS, "seed": [100 + i for i in range(6)]}
    job = write_job(tmp_path, rows, styles=None, extra=EXTRA, num_candidates=1, keep=1, max_failed_fraction=0.5)
    out = tmp_path / "out"
    first = run(job, out, "actor.exit_on_seed=103")
    assert first.returncode == 0, first.stderr[-3000:]  # one error of 6 is within the job's error budget
    table = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert table["r3"]["status"] == "error" and "worker died" in table["r3"]["reason"], table["r3"]
    # under the code of the stage whose actor died, like every error reason: counted as a code, not a sentence
    assert table["r3"]["reason"].startswith("generate: worker died on this unit"), table["r3"]
    assert json.loads((out / "summary.json").read_text())["reasons"] == {"generate": 1}
    assert table["r3"]["path"] is None
    assert all(table[f"r{i}"]["status"] == "written" for i in (0, 1, 2, 4, 5))
    second = run(job, out)  # the fault is gone: the rerun retries only the error row
    assert second.returncode == 0, second.stderr[-3000:]
    assert "1 to go" in second.stdout + second.stderr
    assert_complete(out, 6, retried=(table["r3"]["item_id"],))  # its error row, then its result


def test_an_exception_in_a_stage_on_an_actor_costs_only_its_unit(tmp_path):
    # A Python exception raised inside an actor (not a death): the unit becomes error rows with
    # the message, the other units are written, and a rerun retries only that unit.
    rows = {**ROWS, "seed": [200 + i for i in range(6)]}
    job = write_job(tmp_path, rows, styles=None, extra=EXTRA, num_candidates=1, keep=1, max_failed_fraction=0.5)
    out = tmp_path / "out"
    first = run(job, out, "prompt.error=202")
    assert first.returncode == 0, first.stderr[-3000:]
    table = {r["id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert table["r2"]["status"] == "error" and "injected prompt-check failure" in table["r2"]["reason"]
    assert table["r2"]["reason"].startswith("generate: unit failed: RuntimeError: injected prompt-check failure")
    assert all(table[f"r{i}"]["status"] == "written" for i in (0, 1, 3, 4, 5))
    second = run(job, out)
    assert second.returncode == 0 and "1 to go" in second.stdout + second.stderr
    assert_complete(out, 6, retried=(table["r2"]["item_id"],))


@pytest.mark.parametrize("point, extra", [("driver.kill_before_shard=1", EXTRA),
                                          ("driver.kill_after_shard=2", WRITERS)],
                         ids=["before_shard", "writers-after_shard"])
def test_driver_killed_with_the_output_on_s3_then_rerun_completes(tmp_path, s3, point, extra):
    # The output is a bucket prefix: shards, images, results and the lock are objects. The
    # killed run's lock object stays behind until its lease runs out; then the rerun takes over.
    import time

    job = write_job(tmp_path, ROWS, styles=None, extra=extra, num_candidates=2, keep=1)
    # The lease outlasts the refused run's start (imports, reading the manifest) on a loaded
    # 2-core machine, so it is refused while the killed run's lease still runs.
    out, lease = f"s3://{s3.bucket}/out", "10"
    first = run(job, out, point, ASSET_PIPELINE_LOCK_LEASE_S=lease)
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    refused = run(job, out, ASSET_PIPELINE_LOCK_LEASE_S=lease)
    assert refused.returncode == 1 and "another run is using this output" in refused.stderr
    time.sleep(float(lease))
    second = run(job, out, ASSET_PIPELINE_LOCK_LEASE_S=lease)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_complete(out, 12)
    assert not list(tmp_path.glob("s3*")) and not (tmp_path / "out").exists()  # nothing of it on local disk
