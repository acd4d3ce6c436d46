"""The RayJob's entrypoint: `python -m pipeline ARGS`, its outcome turned into what KubeRay does next.

KubeRay (checked against v1.7.0, rayjob_controller.go) retries a RayJob on a new cluster
(`spec.backoffLimit`) whenever its Ray job ends FAILED, whatever the exit code
(`checkBackoffLimitAndUpdateStatusIfNeeded` spares only the reasons DeadlineExceeded and
JobStatusCheckTimeoutExceeded). A Ray job that ends STOPPED makes the RayJob `Complete`, which is
never retried. So a failure that a retry would only repeat stops its own Ray job:

    pipeline                                             this wrapper        Ray job    RayJob
    0  done                                              exits 0             SUCCEEDED  Complete
    1  invalid job, input, model or signer; output       stops its Ray job   STOPPED    Complete: not retried
       locked by another run; a refused command line
    2  stopped early (error budget, lock lost) or        exits 2             FAILED     retried, resumes
       candidates pending
    a crash (an exception the CLI does not expect)       exits 1             FAILED     retried, resumes

The stop goes to the Ray dashboard on this node through Ray's job client (the driver runs on the
head; `$RAY_API_SERVER_ADDRESS` overrides) for this job's submission id (Ray passes it to the driver in
`$RAY_JOB_CONFIG_JSON_ENV_VAR`); Ray's job supervisor then ends this process and records STOPPED,
whatever its exit code. If the stop cannot be made, the wrapper exits 1 and KubeRay retries (a
wasted cluster, never a lost final failure). A line starting `asset-pipeline: final` says which
path was taken.

`--optional-trust-anchors FILE` before the pipeline's arguments passes `--trust-anchors FILE` to
`run` only when FILE exists (the signer Secret's trust-anchors.pem is optional).

Runs in-process (the pipeline's `main`), so a crash is told from an exit 1 it chose.
"""

from __future__ import annotations

import json
import os
import sys
import time
import traceback

FINAL_EXIT = 1  # the CLI's EXIT_INVALID (pipeline/errors.py): a retry would fail the same way
DASHBOARD = "http://127.0.0.1:8265"  # the head's dashboard (rayjob.yaml: dashboard-host 0.0.0.0)
STOP_WAIT_S = float(os.environ.get("ASSET_PIPELINE_STOP_WAIT_S", "60"))  # Ray's supervisor kills within ~3 s


def pipeline_exit(argv: list[str]) -> tuple[int, bool]:
    """The pipeline's exit code for `argv`, and whether a retry would only repeat it."""
    from pipeline.cli import main

    try:
        code = main(argv)
    except SystemExit as e:  # argparse refused the command line: it is the same on every attempt
        code = e.code if isinstance(e.code, int) else 1
        return code, code != 0
    except BaseException:  # noqa: BLE001 — not one of the pipeline's own errors: worth a retry
        traceback.print_exc()
        return 1, False
    return code, code == FINAL_EXIT


def submission_id() -> str | None:
    """This Ray job's submission id, from the job config Ray's job supervisor gives the driver."""
    try:
        config = json.loads(os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR", ""))
        return config["metadata"]["job_submission_id"] or None
    except (ValueError, KeyError, TypeError):
        return None


def stop_own_job() -> str | None:
    """Ask the Ray dashboard to stop this Ray job; None when asked, else why it could not be.
    Ray's own client: it adds the cluster's auth token where token authentication is on."""
    job = submission_id()
    if not job:
        return "no Ray job submission id (not started by `ray job submit`)"
    address = os.environ.get("RAY_API_SERVER_ADDRESS", DASHBOARD)
    try:
        from ray.job_submission import JobSubmissionClient

        stopped = JobSubmissionClient(address).stop_job(job)
    except Exception as e:  # noqa: BLE001 — unreachable, refused, Ray missing: the job ends FAILED instead
        return f"{address} did not stop Ray job {job}: {type(e).__name__}: {e}"
    return None if stopped else f"{address}: Ray job {job} was not running"


def with_trust_anchors(argv: list[str]) -> list[str]:
    """`--optional-trust-anchors FILE ARGS` → ARGS, plus `--trust-anchors FILE` if FILE exists."""
    if argv[:1] != ["--optional-trust-anchors"]:
        return argv
    path, rest = argv[1], argv[2:]
    return [*rest, "--trust-anchors", path] if os.path.isfile(path) else rest


def main(argv: list[str]) -> int:
    code, final = pipeline_exit(with_trust_anchors(argv))
    if not final:
        return code
    print(f"asset-pipeline: final failure (exit {code}): a retry would fail the same way; "
          "stopping this Ray job so that KubeRay does not retry it", file=sys.stderr, flush=True)
    why = stop_own_job()
    if why is None:
        time.sleep(STOP_WAIT_S)  # Ray's job supervisor ends this process: the job is STOPPED
        why = f"still running {STOP_WAIT_S:g} s after the stop"
    print(f"asset-pipeline: final failure not marked ({why}); exiting {code}: KubeRay may retry it",
          file=sys.stderr, flush=True)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
