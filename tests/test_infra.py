"""The Kubernetes manifests in infra/, checked without a cluster.

Every YAML parses (placeholders filled in); each RayJob's entrypoint parses with the CLI's own
parser and names a job file the image holds; both RayJob variants use one image and the
Dockerfile's Ray version, and differ only in storage; the object-storage variant writes to a
bucket, mounts no output volume and gives every Ray pod its storage credentials from a Secret (or
a workload identity), never as a literal value or through Ray's runtime env; the shared-volume
variant writes to a mounted volume. The nightly scheduler script runs against a fake kubectl.
"""

from __future__ import annotations

import os
import re
import shlex
import stat
import subprocess
import tomllib
from pathlib import Path

import pytest
import yaml

from pipeline.cli import _parser
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


def ray_container(pod: dict) -> dict:
    return pod["containers"][0]  # KubeRay runs Ray in the first container


def entry(job: dict):
    argv = shlex.split(job["spec"]["entrypoint"])
    assert argv[:3] == ["python", "-m", "pipeline"], argv
    return _parser().parse_args(argv[3:])


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
            pod.pop("serviceAccountName", None)
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
    for group, pod in pods(rayjob(OBJECT)).items():
        if pod.get("serviceAccountName"):  # a workload identity
            continue
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
  "get rayjob.ray.io/"*) case "$*" in *jobDeploymentStatus*) echo Complete ;; *) echo SUCCEEDED ;; esac ;;
esac
"""


def cron_docs() -> dict[str, dict]:
    return {d["kind"]: d for d in docs("cronjob.yaml")}


def run_nightly(tmp_path: Path, template: str, active: str = "") -> tuple[subprocess.CompletedProcess, Path]:
    """cronjob.yaml's script, with kubectl faked, against a template file (the ConfigMap's)."""
    kinds = cron_docs()
    script = tmp_path / "run-nightly.sh"
    script.write_text(kinds["ConfigMap"]["data"]["run-nightly.sh"])
    (tmp_path / "bin").mkdir()
    kubectl = tmp_path / "bin" / "kubectl"
    kubectl.write_text(FAKE_KUBECTL)
    kubectl.chmod(kubectl.stat().st_mode | stat.S_IEXEC)
    (tmp_path / "rayjob.yaml").write_text(template)
    created = tmp_path / "created.yaml"
    env = {"PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}", "RUN_ID": RUN_ID, "FAKE_ACTIVE": active,
           "TEMPLATE": str(tmp_path / "rayjob.yaml"), "FAKE_LOG": str(tmp_path / "log"),
           "FAKE_CREATED": str(created)}
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
