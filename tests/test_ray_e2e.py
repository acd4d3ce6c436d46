"""End to end through the real CLI and real Ray: local instance, and a head + worker cluster."""

import os
import secrets
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from tests.helpers import write_job

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ROWS = {
    "id": ["shoe", "mug-jp", "bag", "lamp"],
    "prompt": ["running shoes, dynamic angle", "朝の光の中のコーヒーカップ", "a leather bag", "a desk lamp"],
    "style": ["studio", "brand", None, "studio"],
    "campaign": ["spring", "jp", "autumn", "spring"],
}
EXTRA = "[output]\nwrite_rejected = true\n"


def cli(*args, env=None, timeout=600):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, **(env or {})})


def pixels(out: Path, table) -> dict:
    return {r["item_id"]: np.asarray(Image.open(out / r["path"])).astype(int)
            for r in table.to_pylist() if r["path"]}


def test_run_verify_and_regenerate_one_row_alone(tmp_path):
    job = write_job(tmp_path, ROWS, extra=EXTRA, num_candidates=2, keep=1)
    run = cli("run", str(job), "--output", str(tmp_path / "full"))
    assert run.returncode == 0, run.stderr[-3000:]
    assert "written 4" in run.stdout
    assert "1 generate actor(s), each writing its own images" in run.stderr  # CPU only: no writer actors
    ver = cli("verify", str(tmp_path / "full"))
    assert ver.returncode == 0 and "verified 8 image(s): OK" in ver.stdout, ver.stdout + ver.stderr
    full = pq.read_table(tmp_path / "full" / "results.parquet")
    assert full.num_rows == 8 and full["campaign"].to_pylist()[::2] == ROWS["campaign"]
    assert set(full["status"].to_pylist()) == {"written", "rejected"}
    written = [r for r in full.to_pylist() if r["status"] == "written"]
    assert all(r["writer"] == r["worker"] for r in written)  # one actor made and wrote each image

    # One row alone, in its own output folder: the same item ids and the same pixels.
    assert_regenerated_alike(job, tmp_path / "full", full, "mug-jp", tmp_path / "alone", files=2)


def assert_regenerated_alike(job: Path, out: Path, table, rows: str, alone: Path, files: int) -> None:
    """`rows` (comma-separated ids) run alone into `alone`: `files` images, each one of the full
    run's items (`out`, `table`) with the same pixels (≤ 2/255)."""
    run = cli("run", str(job), "--rows", rows, "--output", str(alone))
    assert run.returncode == 0, run.stderr[-3000:]
    a, b = pixels(out, table), pixels(alone, pq.read_table(alone / "results.parquet"))
    assert len(b) == files and set(b) <= set(a)
    for item, img in b.items():
        assert np.abs(img - a[item]).max() <= 2, item


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_run_on_a_head_and_worker_cluster(tmp_path):
    """A real two-node Ray cluster on loopback, joined with --address."""
    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    # Ray's token authentication, as a real cluster runs it: every process gets the token.
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    # The nodes have their own home and none of the driver's settings (a fresh cluster): what
    # the actors need (here the models cache) must reach them through the job's runtime env.
    node_home = tmp_path / "node-home"
    node_home.mkdir()
    node_env = {k: v for k, v in env.items() if k != "ASSET_PIPELINE_MODELS"} | {"HOME": str(node_home)}
    head = subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1",
                           "--num-cpus=1", "--include-dashboard=false", "--disable-usage-stats"],
                          capture_output=True, text=True, env=node_env, timeout=120)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        address = f"127.0.0.1:{port}"
        worker = subprocess.run([ray, "start", f"--address={address}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", "--disable-usage-stats"],
                                capture_output=True, text=True, env=node_env, timeout=120)
        assert worker.returncode == 0, worker.stderr[-2000:]
        # Separate writer actors (the GPU-cluster layout; a CPU-only run writes on its generate
        # actor): generated pixels go to writers by reference, across the two nodes.
        job = write_job(tmp_path, ROWS, num_candidates=1, keep=1, extra="[cluster]\nwrite_actors = 2\n")
        run = cli("run", str(job), "--address", address, "--output", str(tmp_path / "out"), env=env)
        assert run.returncode == 0, run.stderr[-3000:]
        assert "cluster: 2 CPU" in run.stderr and "1 generate actor(s), 2 writer(s)" in run.stderr
        assert cli("verify", str(tmp_path / "out")).returncode == 0
        # The results say which actor generated and which wrote each image (host:pid).
        rows = pq.read_table(tmp_path / "out" / "results.parquet").to_pylist()
        assert all(r["writer"] and r["worker"] and r["writer"] != r["worker"] for r in rows)
        assert not (node_home / ".cache" / "asset-pipeline").exists()  # the driver's models cache was used
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=node_env, timeout=120)


def test_a_model_that_cannot_load_on_the_actors_stops_the_run_with_its_message(tmp_path):
    # The folder looks like a diffusers pipeline to validation but its weights are missing:
    # the load fails inside the actors, and the run must say why and stop, not retry forever.
    model = tmp_path / "broken-model"
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", '
                                            '"unet": ["diffusers", "UNet2DConditionModel"]}')
    job = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]}, styles=None,
                    extra=f'[models]\ndiffusion = "{model}"\n')
    run = cli("run", str(job), "--output", str(tmp_path / "out"), timeout=300)
    assert run.returncode == 1, run.stderr[-3000:]
    assert "a pipeline actor could not start" in run.stderr and "cannot load diffusion model" in run.stderr


def test_a_job_submitted_through_the_jobs_api_to_two_nodes_writes_to_s3(tmp_path, s3):
    """As operators run it: `ray job submit` to a head (the Jobs API) + a worker, nodes with their own
    home and none of the driver's settings, inputs local to the submitter's job file, output on
    an S3-compatible store: work lands on both nodes, results match a local run, nothing of the
    output on local disk."""
    import io

    from pipeline.storage.records import read_results
    from pipeline.storage.store import Output

    ray = str(Path(sys.executable).parent / "ray")
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    node_home = tmp_path / "node-home"
    node_home.mkdir()
    node_env = env | {"HOME": str(node_home)}
    head = subprocess.run([ray, "start", "--head", f"--port={port}", "--node-ip-address=127.0.0.1", "--num-cpus=1",
                           "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
                           "--disable-usage-stats"], capture_output=True, text=True, env=node_env, timeout=180)
    assert head.returncode == 0, head.stderr[-2000:]
    try:
        worker = subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", "--disable-usage-stats"],
                                capture_output=True, text=True, env=node_env, timeout=180)
        assert worker.returncode == 0, worker.stderr[-2000:]
        job = write_job(tmp_path / "job", ROWS, num_candidates=1, keep=1, extra="[cluster]\nwrite_actors = 2\n")
        out = f"s3://{s3.bucket}/nightly"
        before = set(tmp_path.rglob("*"))
        for _ in range(12):  # a loaded head's job agent may start after its dashboard: Ray says to try again
            submit = subprocess.run(
                [ray, "job", "submit", f"--address=http://127.0.0.1:{dash}", "--",
                 sys.executable, "-m", "pipeline", "run", str(job), "--output", out],
                cwd=ROOT, capture_output=True, text=True, env=env, timeout=600)
            if "No available agent to submit job" not in submit.stderr:
                break
            time.sleep(5)
        assert submit.returncode == 0, (submit.stdout + submit.stderr)[-3000:]
        assert "1 generate actor(s), 2 writer(s)" in submit.stdout + submit.stderr
        assert cli("verify", out).returncode == 0
        remote = read_results(Output(out)).to_pylist()
        assert {r["worker"].split(":")[1] for r in remote} != {r["writer"].split(":")[1] for r in remote}
        local = cli("run", str(job), "--in-process", "--output", str(tmp_path / "local"))
        assert local.returncode == 0, local.stderr[-2000:]
        here = pq.read_table(tmp_path / "local" / "results.parquet").to_pylist()
        assert [(r["item_id"], r["status"]) for r in remote] == [(r["item_id"], r["status"]) for r in here]
        store = Output(out)
        for a, b in zip(remote, here, strict=True):
            if a["path"]:
                there = np.asarray(Image.open(io.BytesIO(store.get(a["path"])))).astype(int)
                assert np.abs(there - np.asarray(Image.open(tmp_path / "local" / b["path"])).astype(int)).max() <= 2
        created = set(tmp_path.rglob("*")) - before
        assert all(tmp_path / "local" in p.parents or p == tmp_path / "local" or node_home in p.parents
                   for p in created), sorted(map(str, created))[:10]
    finally:
        subprocess.run([ray, "stop", "--force"], capture_output=True, env=node_env, timeout=120)


# The tasks a cluster has seen, through Ray's state API (the dashboard), as (name, state).
TASKS = """
import json, sys
from ray.util.state import list_tasks
tasks = list_tasks(address=sys.argv[1], limit=10000, raise_on_missing_output=False)
print(json.dumps([[t.name, t.state] for t in tasks]))
"""


def test_a_node_without_the_signer_keys_stops_the_run_before_generating(tmp_path):
    """As it happens in real life: the driver has the real signer keys in environment variables
    (its self-test passes), the node does not (a Secret not mounted there). Keys are never shipped
    through Ray, so the writer actor cannot load them: the run stops with a message naming the
    variable, no key text in it, and no unit was ever given to an actor to generate."""
    import json
    import shutil
    import signal
    import tempfile
    import time

    from pipeline.provenance.demo_ca import make_demo_credentials

    ray = str(Path(sys.executable).parent / "ray")
    creds = make_demo_credentials(tmp_path / "creds")
    key_text = creds.private_key.read_text()
    port, dash = free_port(), free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(16)}
    node_home = tmp_path / "node-home"
    node_home.mkdir()
    node_env = env | {"HOME": str(node_home)}
    driver_env = env | {"TEST_SIGNER_CHAIN": creds.cert_chain.read_text(), "TEST_SIGNER_KEY": key_text}
    # A separate writer actor: the layout where generation could start before the writer fails.
    extra = (f'[signer]\nmode = "files"\ncert_chain_env = "TEST_SIGNER_CHAIN"\nprivate_key_env = "TEST_SIGNER_KEY"\n'
             f'trust_anchors = "{creds.ca_cert}"\n[cluster]\nwrite_actors = 1\n')
    job = write_job(tmp_path / "job", {"id": ["a"], "prompt": ["a mug"]}, styles=None, extra=extra)
    # A head of its own (its own temp folder, --block), stopped by its process id at the end:
    # `ray stop` would stop every Ray node on the machine.
    temp = tempfile.mkdtemp(prefix="ray-t-")
    log = tmp_path / "head.log"
    with open(log, "w") as f:
        head = subprocess.Popen([ray, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
                                 "--num-cpus=1", f"--temp-dir={temp}", "--include-dashboard=true",
                                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--disable-usage-stats"],
                                stdout=f, stderr=subprocess.STDOUT, env=node_env, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while "block forever" not in log.read_text():
            assert head.poll() is None and time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.5)
        run = cli("run", str(job), "--address", f"127.0.0.1:{port}", "--output", str(tmp_path / "out"),
                  env=driver_env, timeout=300)
        assert run.returncode == 1, run.stderr[-3000:]
        assert ("a pipeline actor could not start: pipeline.errors.SignerError: [signer].cert_chain_env: "
                "environment variable TEST_SIGNER_CHAIN is not set") in run.stderr, run.stderr[-3000:]
        secret_lines = [line for line in key_text.splitlines() if line and "-----" not in line]
        assert "PRIVATE KEY" not in run.stdout + run.stderr
        assert not any(line in run.stdout + run.stderr for line in secret_lines)
        # Nothing generated, as Ray saw it: both actors were created (the writer's creation
        # failed), and no unit of work was ever submitted to one.
        for _ in range(60):
            seen = subprocess.run([sys.executable, "-c", TASKS, f"http://127.0.0.1:{dash}"], capture_output=True,
                                  text=True, env=env, timeout=120)
            assert seen.returncode == 0, seen.stderr[-2000:]
            tasks = json.loads(seen.stdout.strip().splitlines()[-1])
            if sum(name == "_StageActor.__init__" for name, _ in tasks) == 2:
                break
            time.sleep(1)
        assert "FAILED" in {state for name, state in tasks if name == "_StageActor.__init__"}, tasks
        assert not [t for t in tasks if t[0] == "_StageActor.run"], tasks
    finally:
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait()
        shutil.rmtree(temp, ignore_errors=True)


def test_a_plain_run_beside_a_ray_start_cluster_starts_its_own(tmp_path):
    """`ray start` left a cluster on this machine: a run without --address starts its own local
    instance beside it (Ray would otherwise join that cluster, found through the address file
    under its temp folder, and refuse the local instance's settings); `--address auto` joins it.

    The cluster lives in a temp folder of its own (RAY_TMPDIR, also given to the runs), so no
    other Ray on the machine sees it, and in a process group of its own, which is what is
    stopped at the end: `ray stop` would stop every Ray of this user on the machine."""
    import shutil
    import tempfile

    ray = str(Path(sys.executable).parent / "ray")
    ray_tmp = tempfile.mkdtemp(prefix="rt", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    env = {**os.environ, "RAY_TMPDIR": ray_tmp}
    env.pop("RAY_ADDRESS", None)
    head_cpus = 3 if os.cpu_count() != 3 else 5  # a count the local instance will not have
    head = subprocess.Popen([ray, "start", "--head", f"--port={free_port()}", "--node-ip-address=127.0.0.1",
                             f"--num-cpus={head_cpus}", "--include-dashboard=false", "--disable-usage-stats"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    group = head.pid  # a new session: `ray start` and every process it leaves running are this group
    try:
        _, err = head.communicate(timeout=180)
        assert head.returncode == 0, err[-2000:]
        assert (Path(ray_tmp) / "ray" / "ray_current_cluster").exists()  # what Ray would find and join
        job = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]}, styles=None, num_candidates=1, keep=1)
        plain = cli("run", str(job), "--output", str(tmp_path / "plain"), env=env)
        assert plain.returncode == 0, plain.stderr[-3000:]
        assert f"cluster: {head_cpus:g} CPU" not in plain.stderr and "written 1" in plain.stdout
        joined = cli("run", str(job), "--address", "auto", "--output", str(tmp_path / "joined"), env=env)
        assert joined.returncode == 0, joined.stderr[-3000:]
        assert f"cluster: {head_cpus:g} CPU" in joined.stderr and "written 1" in joined.stdout
    finally:
        _stop_group(group)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_group(group: int) -> None:
    """Stop a process group: SIGTERM, up to 10 s to exit, then SIGKILL."""
    import signal
    import time

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(group, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                return
            time.sleep(0.2)
