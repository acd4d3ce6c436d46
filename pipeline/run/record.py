"""The run record, `_runs/<run_id>.json`: which run made a result, with what.

Written when a run starts, before any work: the resolved config, library versions, the host
and process, and the models with their fingerprints, so any result can be traced to its run.
Read back to name the latest other run when this one lost its output.
"""

from __future__ import annotations

import os
import platform
from datetime import UTC, datetime

import polars as pl

from pipeline.spec.config import JobConfig
from pipeline.storage import layout
from pipeline.storage.lock import holder_name
from pipeline.storage.records import latest_run, write_json
from pipeline.storage.store import Output

PACKAGES = ("asset-pipeline", "torch", "diffusers", "transformers", "open_clip_torch", "c2pa-python", "ray",
            "pyarrow", "polars")


def write(cfg: JobConfig, run_id: str, out: Output, planned: int, styles: pl.DataFrame) -> None:
    """The record of run `run_id` of `cfg`, which planned `planned` candidates with `styles`."""
    write_json({
        "run_id": run_id, "started_at": datetime.now(UTC).isoformat(),
        "host": platform.node(), "pid": os.getpid(), "python": platform.python_version(), "versions": _versions(),
        "models": _models(cfg, styles), "planned_candidates": planned, "config": cfg.to_dict(),
    }, out, layout.run_record(run_id))


def _versions() -> dict[str, str | None]:
    from importlib.metadata import PackageNotFoundError, version

    versions = {}
    for pkg in PACKAGES:
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    return versions


def _models(cfg: JobConfig, styles: pl.DataFrame) -> dict[str, dict]:
    """Every model with its fingerprint: the job's, and each style's own diffusion model."""
    from pipeline.models.fingerprint import fingerprint

    m = cfg.models
    own = styles.filter(pl.col("model").is_not_null()).select("style", "model", "model_revision")
    return {
        "styles": {name: {"spec": spec, "revision": rev, "fingerprint": fingerprint(spec, rev)}
                   for name, spec, rev in own.iter_rows()},
        "diffusion": {"spec": m.diffusion, "revision": m.diffusion_revision,
                      "fingerprint": fingerprint(m.diffusion, m.diffusion_revision)},
        "clip": {"spec": m.clip, "pretrained": m.clip_pretrained,
                 "fingerprint": fingerprint(m.clip_pretrained or m.clip)},
        "moderation": {"spec": m.moderation, "fingerprint": fingerprint(m.moderation)},
        "prompt_classifier": {"spec": m.prompt_classifier, "fingerprint": fingerprint(m.prompt_classifier)},
    }


def latest_other(out: Output, run_id: str) -> str | None:
    """The run record of the latest run but this one, named as the lock names its holder."""
    latest = latest_run(out, other_than=run_id)
    if latest is None:
        return None
    r = latest.record
    return (holder_name({"run": latest.run_id, "job": r.get("config", {}).get("job", {}).get("name"),
                         "host": r.get("host"), "pid": r.get("pid")}) + f", started at {latest.started_at}")
