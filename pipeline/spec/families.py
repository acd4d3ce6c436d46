"""What each style's model family makes of its settings, checked before any work: a setting the
family ignores is a warning (diffusers drops it silently), a mode it has no pipeline for is an
error naming the row, the family and the mode.

A model's family is read from its folder's JSON files (`models.families.describe_folder`, no
torch): an embedded model is built first (seconds, cached), a hub id is read from the local cache.
"""

from __future__ import annotations

import functools
from pathlib import Path

import polars as pl

from pipeline.errors import MAX_REPORTED, Problem, show
from pipeline.models.families import NO_GUIDANCE, Family, describe_folder
from pipeline.spec.config import JobConfig
from pipeline.storage.paths import EMBEDDED_PREFIX, model_path


@functools.cache
def family_of(spec: str, revision: str | None = None) -> Family | None:
    """The family of diffusion model `spec`, or None when its folder cannot be read here."""
    if spec.startswith(EMBEDDED_PREFIX):
        from pipeline.models.embedded import ROLES, ensure

        name = spec.removeprefix(EMBEDDED_PREFIX)
        return describe_folder(ensure(name)) if ROLES.get(name) == "diffusion" else None
    path = model_path(spec)
    if path.is_dir():
        return describe_folder(path)
    from huggingface_hub import try_to_load_from_cache

    try:
        cached = try_to_load_from_cache(spec, "model_index.json", revision=revision)
    except Exception:  # noqa: BLE001 — not a hub id: the loader names the problem
        return None
    return describe_folder(Path(cached).parent) if isinstance(cached, str) else None


def style_models(styles: pl.DataFrame, cfg: JobConfig) -> dict[str | None, tuple[str, str | None]]:
    """Style name (None: rows without a style) → its (model, revision): its own, else the job's."""
    job = (cfg.models.diffusion, cfg.models.diffusion_revision)
    own = {s: (m, r) if m else job for s, m, r in styles.select("style", "model", "model_revision").iter_rows()}
    return {None: job, **own}


def negative_styles(manifest: pl.DataFrame) -> set[str | None]:
    """The styles of manifest rows (a chunk of them) that give a negative prompt of their own."""
    return set(manifest.filter(pl.col("negative_prompt").fill_null("") != "")["style"].to_list()) \
        if "negative_prompt" in manifest.columns else set()


def family_warnings(negatives: set[str | None], styles: pl.DataFrame, cfg: JobConfig) -> list[str]:
    """Settings a style's model family ignores, a line per style and setting (`negatives`: the
    styles of rows with a negative prompt of their own, `negative_styles`)."""
    found = []
    settings = {r["style"]: r for r in styles.iter_rows(named=True)}
    for style, (model, revision) in style_models(styles, cfg).items():
        family = family_of(model, revision)
        if family is None:
            continue
        s = settings.get(style, {})
        who = f"style {show(style)}" if style is not None else "rows without a style"
        what = f"model {show(model)} ({family.name}"
        if family.guidance == NO_GUIDANCE and s.get("guidance_scale") is not None:
            found.append(f"{who}: {what}, which has no guidance) ignores its guidance_scale {s['guidance_scale']:g}")
        if s.get("negative_prompt") or style in negatives:
            guidance = s.get("guidance_scale")
            guidance = cfg.generate.guidance_scale if guidance is None else guidance
            true_cfg = family.negative_scale == "true_cfg_scale"
            scale = cfg.generate.true_cfg_scale if true_cfg else guidance
            if scale <= 1:
                key = "[generate].true_cfg_scale" if true_cfg else "guidance_scale"
                found.append(f"{who}: {what}) ignores the negative prompt unless {key} is above 1 (it is {scale:g})")
    return found


def steering_problems(rows: pl.DataFrame, styles: pl.DataFrame, cfg: JobConfig, uri: str,
                      used: set[str | None]) -> tuple[list[Problem], int]:
    """Rows (resolved: `mode`, `__structure_image`, `__row`) with a structure image in a mode
    their model's family does not steer by one (`models.families.STEERING`). A model that
    carries an IP-Adapter (a style on it that the manifest `used` has a style image) is steered
    by a style image in every call, so that is the steering a row's mode must allow."""
    from pipeline.models.families import STRUCTURE_IMAGE, STYLE_IMAGE, steering_modes

    found, total = [], 0
    models = style_models(styles, cfg)
    with_style_image = set(styles.filter(pl.col("style_image").is_not_null())["style"].to_list()) & used
    for model in set(models.values()):
        family = family_of(*model)
        if family is None:
            continue
        mine = [s for s, m in models.items() if m == model]
        carriers = sorted(s for s in mine if s in with_style_image)
        steering = ((STYLE_IMAGE,) if carriers else ()) + (STRUCTURE_IMAGE,)
        allowed = steering_modes(family.name, steering)
        on_model = pl.col("style").is_in([s for s in mine if s is not None])
        if None in mine:
            on_model = on_model | pl.col("style").is_null()
        bad = rows.filter(on_model & pl.col("__structure_image").is_not_null() & ~pl.col("mode").is_in(allowed))
        total += len(bad)
        for r, i, style, mode, image in bad.select("__row", "id", "style", "mode", "__structure_image") \
                .head(MAX_REPORTED).iter_rows():
            why = ""
            if carriers:
                why = (" with a style image" if style in carriers else
                       f" while it carries an IP-Adapter (style {show(carriers[0])} has a style image)")
            found.append(Problem(uri, f"model {show(model[0])} ({family.name}) takes a structure image{why} in "
                                 f"{', '.join(allowed)} only, and this row is {mode}: {show(image)}",
                                 row=int(r), id=i, column=STRUCTURE_IMAGE))
    return found[:MAX_REPORTED], total


def mode_problems(rows: pl.DataFrame, styles: pl.DataFrame, cfg: JobConfig, uri: str) -> tuple[list[Problem], int]:
    """Rows (resolved: `mode`, `__row`) whose model's family has no pipeline for their mode."""
    found, total = [], 0
    for style, (model, revision) in style_models(styles, cfg).items():
        family = family_of(model, revision)
        if family is None:
            continue
        mine = rows.filter(pl.col("style").is_null() if style is None else pl.col("style") == style)
        bad = mine.filter(~pl.col("mode").is_in(list(family.modes)))
        total += len(bad)
        for r, i, mode in bad.select("__row", "id", "mode").head(MAX_REPORTED).iter_rows():
            found.append(Problem(uri, f"model {show(model)} ({family.name}) has no {mode} pipeline", row=int(r),
                                 id=i, column="product_image"))
    return found, total
