"""The Kubernetes manifests in infra/, checked without a cluster.

Every YAML parses (placeholders filled in); each RayJob's entrypoint parses with the CLI's own
parser and names a job file the image holds; both RayJob variants use one image and the
Dockerfile's Ray version, and differ only in storage; the object-storage variant writes to a
bucket, mounts no output volume and gives every Ray pod its storage credentials from a Secret (or
a workload identity), never as a literal value or through Ray's runtime env; the shared-volume
variant writes to a mounted volume. The nightly scheduler script runs against a fake kubectl.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.cli import _parser
from pipeline.errors import EXIT_INCOMPLETE, EXIT_INVALID
from pipeline.spec.job_checks import value_problems
from pipeline.spec.load import parse_job
from pipeline.storage import paths

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
APP = "/app/"  # infra/Dockerfile: WORKDIR /app, the package and jobs/ copied there
RUN_ID, BUCKET = "2026-01-02", "example-bucket"
OBJECT, SHARED = "rayjob.yaml", "rayjob-shared-volume.yaml"
STORAGE_SECRET = "asset-pipeline-storage"
STORAGE_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
CREDENTIALS = (*STORAGE_KEYS, "AWS_SESSION_TOKEN", "C2PA_PRIVATE_KEY", "C2PA_CERT_CHAIN")
MODELS_PVC = "asset-pipeline-models"


def text(name: str) -> str:
    """A file of infra/; a RayJob template with its placeholders replaced, as the README's `sed`
    does (the other files are applied as they are)."""
    out = (INFRA / name).read_text(encoding="utf-8")
    if name in (OBJECT, SHARED):
        out = out.replace("RUN_ID", RUN_ID).replace("BUCKET", BUCKET)
    return out


def docs(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all(text(name)) if d is not None]


def rayjob(name: str) -> dict:
    (job,) = [d for d in docs(name) if d["kind"] == "RayJob"]
    return job


def pods(job: dict) -> dict[str, dict]:
    """Pod spec of the head and of every worker group, by group."""
    spec = job["spec"]["rayClusterSpec"]
    groups = {"head": spec["headGroupSpec"]} | {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    return {name: g["template"]["spec"] for name, g in groups.items()}


def pod_templates(job: dict) -> dict[str, dict]:
    """Pod spec of every pod a RayJob makes: the Ray pods and KubeRay's submitter (its default pod
    when the RayJob names none)."""
    submitter = job["spec"].get("submitterPodTemplate", {"spec": {"containers": [{"name": "submitter"}]}})
    return pods(job) | {"submitter": submitter["spec"]}


def ray_container(pod: dict) -> dict:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def entry(job: dict):
    """The pipeline's arguments in a RayJob's entrypoint: infra/entrypoint.py (in the image at
    /app/infra/) in front of them, with its own option first."""
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:2] == ["python", APP + "infra/entrypoint.py"], argv
    argv = argv[2:]
    if argv[:1] == ["--optional-trust-anchors"]:
        argv = argv[2:]
    return _parser().parse_args(argv)


def mounts(pod: dict) -> list[tuple[str, dict, dict]]:
    """(mountPath, mount, volume) of the Ray container."""
    volumes = {v["name"]: v for v in pod.get("volumes", [])}
    return [(m["mountPath"], m, volumes[m["name"]]) for m in ray_container(pod).get("volumeMounts", [])]


def walk(node):
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def test_every_yaml_parses():
    files = sorted(INFRA.glob("*.y*ml"))
    assert {OBJECT, SHARED, "cronjob.yaml"} <= {f.name for f in files}
    for f in files:
        found = docs(f.name)
        assert found, f"{f.name}: no documents"
        for d in found:
            assert d.get("apiVersion") and d.get("kind"), f"{f.name}: {d}"


@pytest.mark.parametrize("name", [OBJECT, SHARED])
def test_entrypoint_parses_and_names_a_job_file_in_the_image(name):
    args = entry(rayjob(name))
    assert args.command == "run" and args.address == "auto"
    assert not args.fresh, "a rerun with the same RUN_ID must resume, not start over"
    assert args.job.startswith(APP + "jobs/"), args.job
    assert (ROOT / args.job.removeprefix(APP)).is_file(), f"{args.job} is not in the repo"
    dockerfile = (INFRA / "Dockerfile").read_text()
    assert re.search(r"^WORKDIR /app$", dockerfile, re.M) and re.search(r"^COPY\b.* jobs/ jobs/$", dockerfile, re.M)
    # The wrapper is in the image, and the build context lets it in.
    assert re.search(r"^COPY\b.* infra/entrypoint\.py infra/$", dockerfile, re.M)
    assert "!infra/entrypoint.py" in (INFRA / "Dockerfile.dockerignore").read_text().splitlines()


def test_one_image_and_the_dockerfiles_ray_version():
    ray_version = re.search(r"^ARG RAY_VERSION=(\S+)$", (INFRA / "Dockerfile").read_text(), re.M).group(1)
    images = set()
    for name in (OBJECT, SHARED):
        job = rayjob(name)
        assert job["spec"]["rayClusterSpec"]["rayVersion"] == ray_version, name
        images |= {c["image"] for pod in pods(job).values() for c in pod["containers"]}
    assert len(images) == 1, images


def test_variants_differ_only_in_storage():
    """Resources, images, Ray settings, deadlines: one source of truth, two copies kept equal."""

    def strip(job: dict) -> dict:
        job["spec"].pop("entrypoint")
        job["metadata"].pop("labels", None)
        for pod in pods(job).values():
            pod.pop("volumes", None)
            for c in pod["containers"]:
                c.pop("env", None)
                c.pop("volumeMounts", None)
        return job

    assert strip(rayjob(OBJECT)) == strip(rayjob(SHARED))


def test_object_storage_variant_reads_and_writes_a_bucket():
    job = rayjob(OBJECT)
    args = entry(job)
    assert args.output == f"s3://{BUCKET}/asset-pipeline/{RUN_ID}"
    for group, pod in pods(job).items():
        for path, mount, volume in mounts(pod):
            claim = volume.get("persistentVolumeClaim")
            if claim:  # weights only, read-only: no output volume in this variant
                assert claim["claimName"] == MODELS_PVC and mount.get("readOnly") and claim.get("readOnly"), group
            assert not path.startswith("/data"), f"{group}: {path}"


def test_every_ray_pod_gets_storage_credentials():
    """As shipped, from the Secret (a workload identity on the ServiceAccount replaces it)."""
    for group, pod in pods(rayjob(OBJECT)).items():
        env = {e["name"]: e for e in ray_container(pod).get("env", [])}
        for key in STORAGE_KEYS:
            assert key in env, f"{group}: no {key}"
            ref = env[key].get("valueFrom", {}).get("secretKeyRef", {})
            assert ref.get("name") == STORAGE_SECRET and "value" not in env[key], f"{group}: {env[key]}"


@pytest.mark.parametrize("name", sorted(p.name for p in INFRA.glob("*.y*ml")))
def test_no_credential_in_a_manifest_or_in_rays_runtime_env(name):
    raw = text(name)
    assert not re.search(r"\b(AKIA|ASIA)[0-9A-Z]{16}\b", raw), "an AWS access key id"
    assert "PRIVATE KEY-----" not in raw
    for doc in docs(name):
        if doc["kind"] == "Secret":
            assert not doc.get("data") and not doc.get("stringData"), f"{name}: a Secret with values"
        for node in walk(doc):
            if isinstance(node, dict) and node.get("name") in CREDENTIALS:
                assert "value" not in node, f"{name}: {node['name']} given literally"
        runtime_env = doc.get("spec", {}).get("runtimeEnvYAML", "") if doc["kind"] == "RayJob" else ""
        for key in CREDENTIALS:  # the runtime env is visible cluster-wide (dashboard, job info)
            assert key not in runtime_env, f"{name}: {key} in runtimeEnvYAML"


def test_shared_volume_variant_writes_a_mounted_volume():
    job = rayjob(SHARED)
    args = entry(job)
    assert args.output == f"/data/outputs/{RUN_ID}"
    for group, pod in pods(job).items():
        writable = [p for p, m, v in mounts(pod) if "persistentVolumeClaim" in v and not m.get("readOnly")]
        assert any(args.output.startswith(p.rstrip("/") + "/") for p in writable), f"{group}: {writable}"
    # The driver (on the head) reads the manifest and the styles: both on the mounted volume.
    head = [p for p, _, v in mounts(pods(job)["head"]) if "persistentVolumeClaim" in v]
    for uri in (args.manifest, args.styles):
        assert uri and any(uri.startswith(p.rstrip("/") + "/") for p in head), uri


def test_production_job_spec_fits_both_variants():
    path = ROOT / "jobs" / "production.toml"
    cfg = parse_job(tomllib.loads(path.read_text()), base=path.parent, source=str(path))
    assert next(value_problems(cfg), None) is None
    job = cfg.job
    assert cfg.cluster.address == "auto" and cfg.models.device == "cuda"
    # Object storage: the job file names the catalogue on the bucket, and confines inputs to it.
    for uri in (job.manifest, job.styles):
        assert uri.startswith("s3://")
        assert paths.problem(uri, job.allowed_input_roots, job.allowed_input_schemes) is None
    # Shared volume: the RayJob names the catalogue on the volume; the job must accept it too.
    args = entry(rayjob(SHARED))
    for uri in (args.manifest, args.styles):
        photo = paths.resolve("photos/a.png", paths.parent(uri))
        assert paths.problem(photo, job.allowed_input_roots, job.allowed_input_schemes) is None, photo
    signer_file = paths.resolve(cfg.signer.private_key, "/")
    assert paths.problem(signer_file, job.allowed_input_roots, job.allowed_input_schemes), "inputs may read the key"


# --- the nightly CronJob -------------------------------------------------------------------------

FAKE_KUBECTL = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$1 $2" in
  "get rayjobs") case "$*" in *jsonpath*) printf '%s' "$FAKE_ACTIVE" ;; esac ;;
  "create -f") cat > "$FAKE_CREATED"; echo rayjob.ray.io/asset-pipeline-fake ;;
  "get rayjob.ray.io/"*)
    # FAKE_STATES: one line per poll (the last one stays), deployment|jobStatus|reason|failed|message
    case "$*" in
      *jobDeploymentStatus*)
        head -n 1 "$FAKE_STATES" > "$FAKE_STATES.now"
        [ "$(wc -l < "$FAKE_STATES")" -gt 1 ] && sed -i 1d "$FAKE_STATES"
        field=1 ;;
      *jobStatus*) field=2 ;;
      *reason*) field=3 ;;
      *failed*) field=4 ;;
      *message*) field=5 ;;
    esac
    cut -d'|' -f"$field" "$FAKE_STATES.now" | tr -d '\\n' ;;
esac
"""


def cron_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in docs("cronjob.yaml")}


def run_nightly(tmp_path: Path, template: str, active: str = "",
                states: tuple[str, ...] = ("Complete|SUCCEEDED|||",)) -> tuple[subprocess.CompletedProcess, Path]:
    """cronjob.yaml's script, with kubectl faked, against a template file (the ConfigMap's); the
    created RayJob goes through `states`, one a poll."""
    kinds = cron_docs()
    script = tmp_path / "run-nightly.sh"
    script.write_text(kinds["ConfigMap"]["data"]["run-nightly.sh"])
    (tmp_path / "bin").mkdir()
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "rayjob.yaml").write_text(template)
    (tmp_path / "states").write_text("".join(f"{line}\n" for line in states))
    created = tmp_path / "created.yaml"
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "RUN_ID": RUN_ID, "FAKE_ACTIVE": active,
           "TEMPLATE": str(tmp_path / "rayjob.yaml"), "FAKE_LOG": str(tmp_path / "log"),
           "FAKE_CREATED": str(created), "FAKE_STATES": str(tmp_path / "states"), "POLL_SECONDS": "0"}
    done = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True, timeout=10)
    return done, created


def test_cronjob_mounts_the_rayjob_template_and_embeds_no_copy():
    kinds = cron_docs()
    assert "RayJob" not in kinds, "a RayJob copy inside cronjob.yaml would drift from rayjob.yaml"
    pod = kinds["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    templates = [v for v in pod["volumes"] if v.get("configMap", {}).get("name") == "asset-pipeline-rayjob"]
    (volume,) = templates
    (mount,) = [m for m in pod["containers"][0]["volumeMounts"] if m["name"] == volume["name"]]
    script = kinds["ConfigMap"]["data"]["run-nightly.sh"]
    assert f"{mount['mountPath']}/rayjob.yaml" in script
    # The ConfigMap is made from the file (README and the comment show the command).
    for doc in (INFRA / "cronjob.yaml", INFRA / "README.md"):
        assert re.search(r"--from-file=rayjob\.yaml=\S*rayjob", doc.read_text()), doc.name


def test_cronjob_creates_the_rayjob_for_today(tmp_path):
    template = (INFRA / OBJECT).read_text().replace("BUCKET", BUCKET)  # as the ConfigMap holds it
    done, created = run_nightly(tmp_path, template)
    assert done.returncode == 0, done.stderr
    (job,) = [d for d in yaml.safe_load_all(created.read_text()) if d]
    assert entry(job).output == f"s3://{BUCKET}/asset-pipeline/{RUN_ID}"
    assert job["metadata"]["labels"]["asset-pipeline/run-id"] == RUN_ID
    assert f"s3://{BUCKET}/asset-pipeline/{RUN_ID}" in done.stdout  # where to verify


def test_cronjob_refuses_a_template_without_its_bucket_or_beside_an_active_run(tmp_path):
    (tmp_path / "a").mkdir()
    done, created = run_nightly(tmp_path / "a", (INFRA / OBJECT).read_text())  # BUCKET left in
    assert done.returncode != 0 and not created.exists() and "BUCKET" in done.stderr
    (tmp_path / "b").mkdir()
    template = (INFRA / OBJECT).read_text().replace("BUCKET", BUCKET)
    done, created = run_nightly(tmp_path / "b", template, active="other-run Running\n")
    assert done.returncode != 0 and not created.exists() and "other-run" in done.stderr


@pytest.mark.parametrize(("states", "code", "says"), [
    (["Complete|SUCCEEDED|||"], 0, "succeeded"),
    (["|||", "Initializing|NEW|||", "Running|RUNNING|||", "Retrying|FAILED|AppFailed|1|",
      "Running|RUNNING||1|", "Complete|SUCCEEDED||1|"], 0, "succeeded"),
    (["Running|RUNNING|||", "Failed|FAILED|AppFailed|2|exit 2"], 1, "failed after 2 attempt(s) (AppFailed)"),
    (["Failed|RUNNING|DeadlineExceeded|1|"], 1, "(DeadlineExceeded)"),
    (["Complete|STOPPED|||"], 1, "not retried"),
    (["ValidationFailed||ValidationFailed||The RayJob spec is invalid: x"], 1,
     "KubeRay refused the RayJob, nothing ran: The RayJob spec is invalid: x"),
    (["Running|RUNNING|||", "Suspending|RUNNING|||", "Suspended|NEW|||"], 1, "suspended"),
])
def test_cronjob_waits_for_a_final_state_and_reports_it(tmp_path, states, code, says):
    """KubeRay's final deployment states end the wait, each reported; only Complete with a Ray job
    SUCCEEDED exits 0 (ValidationFailed and Suspended used to be waited on until the deadline)."""
    template = (INFRA / OBJECT).read_text().replace("BUCKET", BUCKET)
    done, _ = run_nightly(tmp_path, template, states=tuple(states))
    assert done.returncode == code, done.stdout + done.stderr
    assert says in done.stdout + done.stderr
    polls = (tmp_path / "log").read_text().count("jobDeploymentStatus}")
    assert polls == len(states) + 1  # the guard's listing is one of them


@pytest.mark.parametrize(("others", "starts"), [
    ("old-a ValidationFailed\nold-b Suspended\nold-c Complete\nold-d Failed\n", True),
    ("old-a Complete\nnew-b \n", False),  # just created: no status yet
    ("old-a Retrying\n", False),
    ("old-a Initializing\n", False),
    ("old-a Running\n", False),
])
def test_cronjob_guard_is_blocked_only_by_a_rayjob_still_going(tmp_path, others, starts):
    template = (INFRA / OBJECT).read_text().replace("BUCKET", BUCKET)
    done, created = run_nightly(tmp_path, template, active=others)
    assert created.exists() is starts, done.stderr
    if not starts:
        assert done.returncode != 0 and "still active" in done.stderr


# --- KubeRay: version, retries, deadlines --------------------------------------------------------

# RayJob spec fields and the KubeRay release that added each (ray-operator/apis/ray/v1/rayjob_types.go).
KUBERAY_FIELD_SINCE = {"backoffLimit": (1, 2, 0), "submitterPodTemplate": (1, 1, 0),
                       "activeDeadlineSeconds": (1, 1, 0), "preRunningDeadlineSeconds": (1, 6, 0)}


def stated_minimum(text_: str) -> tuple[int, ...]:
    (found,) = set(re.findall(r"KubeRay operator (?:≥|>=) ?(\d+\.\d+(?:\.\d+)?)", text_))
    return tuple(int(x) for x in found.split("."))


def test_stated_kuberay_minimum_covers_every_field_used():
    """An operator older than a field's release drops it (or kubectl refuses the RayJob): the
    minimum stated in the README and each RayJob must be at least the newest field's."""
    for name in (OBJECT, SHARED):
        spec = rayjob(name)["spec"]
        assert set(spec) & set(KUBERAY_FIELD_SINCE) >= {"backoffLimit", "activeDeadlineSeconds"}
        needed = max(KUBERAY_FIELD_SINCE.get(k, (1, 0, 0)) for k in spec)
        assert stated_minimum((INFRA / name).read_text()) >= needed, name
        assert stated_minimum((INFRA / "README.md").read_text()) >= needed


def test_deadlines_hold_across_retries_and_nights():
    """KubeRay sets the RayJob's StartTime again on each retry and counts activeDeadlineSeconds
    (and preRunningDeadlineSeconds) from it: an attempt that failed just before its deadline is
    retried with a whole new one. All attempts with their teardown must end before the
    scheduler's own deadline, and that one before the next night's start may be missed."""
    cron = cron_docs()["CronJob"]["spec"]
    cron_deadline = cron["jobTemplate"]["spec"]["activeDeadlineSeconds"]
    assert cron_deadline + cron["startingDeadlineSeconds"] <= 24 * 3600
    for name in (OBJECT, SHARED):
        spec = rayjob(name)["spec"]
        attempts = spec["backoffLimit"] + 1
        assert attempts * spec["activeDeadlineSeconds"] + 3600 <= cron_deadline, name  # 1 h for teardowns
        assert 0 < spec["preRunningDeadlineSeconds"] < spec["activeDeadlineSeconds"], name
    # The comments say the same numbers.
    raw = (INFRA / "cronjob.yaml").read_text()
    hours = spec["activeDeadlineSeconds"] // 3600
    assert f"{attempts} × {hours} h" in raw or f"({spec['backoffLimit']} + 1) × {hours} h" in raw


# --- the RayJob's entrypoint: exit codes KubeRay retries or not ---------------------------------

FAKE_CLI = '''
import json, os, sys


def main(argv):
    with open(os.environ["FAKE_ARGV"], "w") as f:
        json.dump(argv, f)
    outcome = os.environ["FAKE_OUTCOME"]
    if outcome == "crash":
        raise RuntimeError("the GCS went away")
    if outcome == "usage":
        raise SystemExit(2)  # what argparse does with a command line it refuses
    return int(outcome)
'''


class FakeDashboard:
    """Ray's dashboard as far as the wrapper uses it: POST /api/jobs/<id>/stop, answered, then
    the wrapper's process ended with SIGTERM as Ray's job supervisor does."""

    def __init__(self):
        import http.server
        import threading

        self.stops: list[str] = []
        self.process: subprocess.Popen | None = None
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 — the http.server API
                outer.stops.append(self.path)
                body = json.dumps({"stopped": True}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
                if outer.process is not None:
                    outer.process.send_signal(signal.SIGTERM)

            def do_GET(self):  # noqa: N802 — Ray's job client checks the version first
                body = json.dumps({"version": "4", "ray_version": "2.60.0", "ray_commit": "x"}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def dashboard():
    d = FakeDashboard()
    yield d
    d.close()


def run_wrapper(tmp_path: Path, outcome: str, args: list[str], dashboard: FakeDashboard | None = None,
                submission_id: str | None = "raysubmit_abc") -> tuple[int, str, list[str]]:
    """infra/entrypoint.py with a fake `pipeline.cli.main` that ends as `outcome`; its exit code
    (negative: the signal that ended it), its stderr and the arguments the pipeline got."""
    fake = tmp_path / "fake"
    (fake / "pipeline").mkdir(parents=True)
    (fake / "pipeline" / "__init__.py").write_text("")
    (fake / "pipeline" / "cli.py").write_text(FAKE_CLI)
    env = {"PATH": os.environ["PATH"], "PYTHONPATH": str(fake), "FAKE_OUTCOME": outcome,
           "FAKE_ARGV": str(tmp_path / "argv.json"), "ASSET_PIPELINE_STOP_WAIT_S": "5",
           "RAY_API_SERVER_ADDRESS": dashboard.url if dashboard else "http://127.0.0.1:9"}
    if submission_id:
        env["RAY_JOB_CONFIG_JSON_ENV_VAR"] = json.dumps({"runtime_env": {},
                                                         "metadata": {"job_submission_id": submission_id}})
    process = subprocess.Popen([sys.executable, str(INFRA / "entrypoint.py"), *args], env=env,
                               stderr=subprocess.PIPE, text=True)
    if dashboard:
        dashboard.process = process
    _, stderr = process.communicate(timeout=30)
    return process.returncode, stderr, json.loads((tmp_path / "argv.json").read_text())


RUN_ARGS = ["run", "/app/jobs/production.toml", "--address", "auto"]


@pytest.mark.parametrize(("outcome", "code"), [("0", 0), ("2", 2), ("crash", 1)])
def test_entrypoint_passes_on_what_a_retry_may_fix(tmp_path, dashboard, outcome, code):
    """0 ends the Ray job SUCCEEDED; 2 (stopped early, candidates pending) and a crash end it
    FAILED, which KubeRay retries on a new cluster (the retry resumes)."""
    returncode, stderr, argv = run_wrapper(tmp_path, outcome, RUN_ARGS, dashboard)
    assert returncode == code and argv == RUN_ARGS
    assert dashboard.stops == [] and "final failure" not in stderr
    if outcome == "crash":
        assert "RuntimeError: the GCS went away" in stderr  # the traceback


@pytest.mark.parametrize("outcome", ["1", "usage"])
def test_entrypoint_stops_its_own_ray_job_on_a_final_failure(tmp_path, dashboard, outcome):
    """Exit 1 (invalid job, input, model or signer; output locked) or a refused command line: a
    retry would fail the same way. The wrapper stops its own Ray job (STOPPED: the RayJob ends
    Complete, which KubeRay never retries) and waits for Ray to end it."""
    returncode, stderr, _ = run_wrapper(tmp_path, outcome, RUN_ARGS, dashboard)
    assert dashboard.stops == ["/api/jobs/raysubmit_abc/stop"]
    assert returncode == -signal.SIGTERM, stderr
    assert "asset-pipeline: final failure" in stderr and "not marked" not in stderr


@pytest.mark.parametrize("submission_id", ["raysubmit_abc", None])
def test_entrypoint_exits_1_when_it_cannot_stop_its_ray_job(tmp_path, submission_id):
    """No dashboard, or not run by `ray job submit`: the final failure ends FAILED (KubeRay may
    retry it; the retry fails the same way), never as a success."""
    returncode, stderr, _ = run_wrapper(tmp_path, "1", RUN_ARGS, submission_id=submission_id)
    assert returncode == 1
    assert "final failure not marked" in stderr and "KubeRay may retry" in stderr


def test_entrypoint_contract_is_the_clis_exit_codes():
    spec = importlib.util.spec_from_file_location("rayjob_entrypoint", INFRA / "entrypoint.py")
    wrapper = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(wrapper)
    assert wrapper.FINAL_EXIT == EXIT_INVALID and EXIT_INCOMPLETE != EXIT_INVALID


# --- the signer's trust anchors are optional -----------------------------------------------------

SIGNER_MOUNT = "/etc/asset-pipeline/signer"


@pytest.mark.parametrize("present", [True, False])
def test_entrypoint_passes_trust_anchors_only_when_the_secret_has_them(tmp_path, present):
    anchors = tmp_path / "trust-anchors.pem"
    if present:
        anchors.write_text("-----BEGIN CERTIFICATE-----\n")
    returncode, _, argv = run_wrapper(tmp_path, "0", ["--optional-trust-anchors", str(anchors), *RUN_ARGS])
    assert returncode == 0
    assert argv == (RUN_ARGS + ["--trust-anchors", str(anchors)] if present else RUN_ARGS)


@pytest.mark.parametrize("name", [OBJECT, SHARED])
def test_trust_anchors_are_optional_in_the_secret(name):
    """A signer Secret without trust-anchors.pem must start: the volume projects whatever keys the
    Secret has (no `items` list naming it, or optional), the job file does not name the file, and
    the entrypoint passes it only when it is there."""
    job = rayjob(name)
    for group, pod in pods(job).items():
        (volume,) = [v for p, m, v in mounts(pod) if p == SIGNER_MOUNT]
        secret = volume["secret"]
        keys = {i["key"] for i in secret.get("items", [])}
        assert "trust-anchors.pem" not in keys or secret.get("optional"), group
    argv = shlex.split(job["spec"]["entrypoint"])
    i = argv.index("--optional-trust-anchors")
    assert argv[i + 1] == f"{SIGNER_MOUNT}/trust-anchors.pem"
    path = ROOT / "jobs" / "production.toml"
    cfg = parse_job(tomllib.loads(path.read_text()), base=path.parent, source=str(path))
    assert cfg.signer.trust_anchors is None, "read unconditionally: a Secret without it fails at start"


def test_run_takes_trust_anchors_on_the_command_line():
    from pipeline.commands import _load

    args = _parser().parse_args(["run", str(ROOT / "jobs" / "demo.toml"), "--trust-anchors", "/x/ca.pem"])
    assert _load(args).signer.trust_anchors == "/x/ca.pem"


# --- pods: pull secret and the restricted Pod Security Standard ----------------------------------

RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim",
                      "projected", "secret"}


def restricted_problems(pod: dict) -> list[str]:
    """What the restricted Pod Security Standard refuses in a pod spec (the fields it checks)."""
    problems = []
    pod_sc = pod.get("securityContext", {})
    for v in pod.get("volumes", []):
        if not set(v) - {"name"} <= RESTRICTED_VOLUMES:
            problems.append(f"volume {v['name']}: {sorted(set(v) - {'name'})}")
    for c in pod.get("initContainers", []) + pod["containers"]:
        sc = c.get("securityContext", {})
        name = c.get("name")
        if not sc.get("runAsNonRoot", pod_sc.get("runAsNonRoot")):
            problems.append(f"{name}: runAsNonRoot")
        if sc.get("runAsUser", pod_sc.get("runAsUser")) == 0:
            problems.append(f"{name}: runAsUser 0")
        if sc.get("allowPrivilegeEscalation") is not False:
            problems.append(f"{name}: allowPrivilegeEscalation")
        caps = sc.get("capabilities", {})
        if "ALL" not in caps.get("drop", []) or set(caps.get("add", [])) - {"NET_BIND_SERVICE"}:
            problems.append(f"{name}: capabilities")
        seccomp = sc.get("seccompProfile", pod_sc.get("seccompProfile", {})).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            problems.append(f"{name}: seccompProfile")
        if sc.get("privileged"):
            problems.append(f"{name}: privileged")
    return problems


def test_every_pod_meets_the_restricted_pod_security_standard():
    pod_specs = {f"{name} {group}": pod for name in (OBJECT, SHARED)
                 for group, pod in pod_templates(rayjob(name)).items()}
    pod_specs["cronjob"] = cron_docs()["CronJob"]["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    for where, pod in pod_specs.items():
        assert not restricted_problems(pod), f"{where}: {restricted_problems(pod)}"


def test_every_pod_of_a_run_gets_the_registry_pull_secret():
    """The image is private in most setups: the head, every worker group and the submitter (all
    the same image) pull it with the pull secret, through their ServiceAccount or their own."""
    (account,) = [d for d in docs("serviceaccount.yaml") if d["kind"] == "ServiceAccount"]
    account_secrets = [s["name"] for s in account.get("imagePullSecrets", [])]
    assert account_secrets
    for name in (OBJECT, SHARED):
        for group, pod in pod_templates(rayjob(name)).items():
            own = [s["name"] for s in pod.get("imagePullSecrets", [])]
            via_account = account_secrets if pod.get("serviceAccountName") == account["metadata"]["name"] else []
            assert own or via_account, f"{name} {group}: no pull secret"
