"""The rules a job spec's values obey once their types are right: ranges (the one table of
limits), vocabularies, an embedded model made for its key, keep ≤ num_candidates, the signer's
files or variables and its timestamp authority's URL. Each problem names the key, the value and
what is allowed.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pipeline.errors import show
from pipeline.spec import channel_formats
from pipeline.spec.config import CostSection, JobConfig, ModelsSection
from pipeline.spec.limits import CHOICES, DEVICE, LIMITS, WATERMARK_TOO_SMALL, Limit
from pipeline.spec.suggest import nearest, suggest
from pipeline.storage.paths import EMBEDDED_PREFIX


def _limited(cfg: JobConfig) -> list[tuple[str, Any, Limit]]:
    """(key, value, limit) of every job-spec key that the table of limits bounds."""
    j, g, f, o, c = cfg.job, cfg.generate, cfg.filter, cfg.output, cfg.cluster
    return [
        ("[job].seed", j.seed, LIMITS["seed"]),
        ("[job].num_candidates", j.num_candidates, LIMITS["num_candidates"]),
        ("[job].max_failed_fraction", j.max_failed_fraction, LIMITS["fraction"]),
        ("[job].max_prompt_chars", j.max_prompt_chars, LIMITS["at_least_one"]),
        ("[generate].steps", g.steps, LIMITS["steps"]),
        ("[generate].guidance_scale", g.guidance_scale, LIMITS["guidance_scale"]),
        ("[generate].strength", g.strength, LIMITS["strength"]),
        ("[generate].inpaint_strength", g.inpaint_strength, LIMITS["strength"]),
        ("[generate].refine_strength", g.refine_strength, LIMITS["strength"]),
        ("[formats].strength", cfg.formats.strength, LIMITS["strength"]),
        ("[generate].width", g.width, LIMITS["size"]),
        ("[generate].height", g.height, LIMITS["size"]),
        ("[generate].batch_size", g.batch_size, LIMITS["at_least_one"]),
        ("[generate].true_cfg_scale", g.true_cfg_scale, LIMITS["guidance_scale"]),
        ("[generate].style_image_scale", g.style_image_scale, LIMITS["style_image_scale"]),
        ("[generate].structure_scale", g.structure_scale, LIMITS["structure_scale"]),
        ("[filter].clip_threshold", f.clip_threshold, LIMITS["clip_threshold"]),
        ("[filter].image_unsafe_threshold", f.image_unsafe_threshold, LIMITS["unsafe_threshold"]),
        ("[filter].prompt_unsafe_threshold", f.prompt_unsafe_threshold, LIMITS["unsafe_threshold"]),
        ("[output].png_compress_level", o.png_compress_level, LIMITS["png_compress_level"]),
        ("[output].jpeg_quality", o.jpeg_quality, LIMITS["quality"]),
        ("[output].webp_quality", o.webp_quality, LIMITS["quality"]),
        ("[output].shard_rows", o.shard_rows, LIMITS["at_least_one"]),
        ("[cluster].gpus_per_actor", c.gpus_per_actor, LIMITS["resources"]),
        ("[cluster].cpus_per_actor", c.cpus_per_actor, LIMITS["resources"]),
        ("[cluster].cpus_per_writer", c.cpus_per_writer, LIMITS["resources"]),
        ("[cluster].generate_actors", c.generate_actors, LIMITS["count"]),
        ("[cluster].write_actors", c.write_actors, LIMITS["count"]),
        ("[cluster].torch_threads", c.torch_threads, LIMITS["count"]),
        ("[cluster].models_per_actor", c.models_per_actor, LIMITS["at_least_one"]),
        *_cost_limited(cfg.cost),
    ]


def _cost_limited(cost: CostSection | None) -> list[tuple[str, Any, Limit]]:
    if cost is None:
        return []
    found = [("[cost].gpus", cost.gpus, LIMITS["count"])]
    if cost.gpu_hour_usd is not None:
        found.append(("[cost].gpu_hour_usd", cost.gpu_hour_usd, LIMITS["price"]))
    for i, t in enumerate(cost.throughput, 1):
        found += [(f"[[cost.throughput]] #{i}.width", t.width, LIMITS["size"]),
                  (f"[[cost.throughput]] #{i}.height", t.height, LIMITS["size"]),
                  (f"[[cost.throughput]] #{i}.steps", t.steps, LIMITS["steps"]),
                  (f"[[cost.throughput]] #{i}.seconds_per_image", t.seconds_per_image, LIMITS["seconds"])]
    return found


def value_problems(cfg: JobConfig) -> Iterator[str]:
    """What is wrong with the values, each naming the key, the value and what is allowed."""
    for key, value, limit in _limited(cfg):
        if not limit.allows(value):
            yield f"{key} must be {limit}, got {show(value)}"
    for key, value, allowed in (("[output].format", cfg.output.format, CHOICES["format"]),
                                ("[signer].mode", cfg.signer.mode, CHOICES["mode"]),
                                ("[signer].algorithm", cfg.signer.algorithm, CHOICES["algorithm"]),
                                ("[models].dtype", cfg.models.dtype, CHOICES["dtype"]),
                                ("[formats].placement", cfg.formats.placement, CHOICES["placement"]),
                                ("[formats].from", cfg.formats.source, CHOICES["formats_from"]),
                                ("[watermark].method", cfg.watermark.method, CHOICES["watermark_method"])):
        if value not in allowed:
            close = nearest(value.lower(), list(allowed))
            yield (f"{key} must be one of {', '.join(allowed)}, got {show(value)}"
                   + (f" (did you mean {close!r}?)" if close else ""))
    yield from _embedded_problems(cfg.models)
    for problem in channel_formats.problems(cfg.formats.sizes):
        yield f"[formats].sizes: {problem}"
    if cfg.watermark.enabled:
        for name in channel_formats.unwatermarkable(cfg.formats.sizes):
            yield f"[formats].sizes: {name} is {WATERMARK_TOO_SMALL}"
    if not DEVICE.fullmatch(cfg.models.device):
        yield f"[models].device must be auto, cpu, mps, cuda or cuda:N, got {show(cfg.models.device)}"
    if not 1 <= cfg.job.keep <= cfg.job.num_candidates:
        yield f"[job].keep must be 1..num_candidates ({cfg.job.num_candidates}), got {cfg.job.keep}"


def _embedded_problems(models: ModelsSection) -> Iterator[str]:
    """An `embedded:` model spec must name an embedded model made for its key (tokens, the
    fingerprint and the loaders look the name up and would fail far from the job file)."""
    for key in ("diffusion", "clip", "moderation", "prompt_classifier", "ip_adapter", "controlnet"):
        if problem := embedded_problem(getattr(models, key), key):
            yield f"[models].{key}: {problem}"


def embedded_problem(spec: str | None, role: str) -> str | None:
    """What is wrong with `spec` as the `role` model when it names an embedded model (None when
    it does not, or names one made for the role): the job's keys and the styles' `model` alike."""
    from pipeline.models.embedded import ROLES

    if not spec or not spec.startswith(EMBEDDED_PREFIX):
        return None
    name = spec.removeprefix(EMBEDDED_PREFIX)
    if ROLES.get(name) == role:
        return None

    def named(n: str) -> str:
        return EMBEDDED_PREFIX + n

    fits = [n for n, r in ROLES.items() if r == role]
    if not fits:
        known = f"there is no embedded {role} model: give a local folder or a hub id"
    elif name in ROLES:
        known = f"known: {', '.join(map(named, fits))}"
    else:
        known = suggest(name, fits, show=lambda n: repr(named(n)))
    what = (f"{named(name)} is the embedded {ROLES[name]} model, not a {role} model" if name in ROLES
            else f"unknown embedded model {name!r}")
    return f"{what} ({known})"


def job_problems(cfg: JobConfig) -> list[str]:
    """Every problem of a typed job spec's values, a line each, naming the job file."""
    src = cfg.source
    problems = [f"{src}: {problem}" for problem in value_problems(cfg)]
    if not cfg.job.manifest:
        problems.append(f"{src}: [job].manifest is required (or pass --manifest)")
    url = cfg.signer.tsa_url
    if url is not None and (urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).hostname):
        problems.append(f"{src}: [signer].tsa_url must be an http:// or https:// URL of an RFC 3161 "
                        f"timestamp authority, got {url!r}")
    if cfg.signer.mode == "files":
        for what in ("cert_chain", "private_key"):
            path = getattr(cfg.signer, what)
            env = getattr(cfg.signer, f"{what}_env")
            if not path and not env:
                problems.append(f"{src}: [signer].{what} or [signer].{what}_env is required when mode = 'files'")
            elif path and not is_file(Path(path)):
                problems.append(f"{src}: [signer].{what}: file not found: {path}")
            elif not path and env and env not in os.environ:
                problems.append(f"{src}: [signer].{what}_env: environment variable {env} is not set")
    return problems


def is_file(path: Path) -> bool:
    """Whether `path` is a file; a name the system cannot look up (too long) is not."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False
