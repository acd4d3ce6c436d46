"""Each manifest row resolved: its values after the row → style → job fallbacks, and each candidate's seed.

The plan's first step, kept apart from the plan's assembly (`build.py`) and its children
(`children.py`): what a row asks for, before anything is hashed into an item id. Pure polars,
vectorised: only the derived seeds are hashed per value (`identity.py`).

Seeds (DESIGN.md "Seeds and reproducibility"):
- the row's `seed` is candidate 0's seed; candidate k > 0 derives from it;
- else the style's pinned `seeds`, in order; candidates past the list derive from its first
  seed, so every product of a style starts from the same noise;
- else blake2b("job", job seed, row id, candidate index).
"""

from __future__ import annotations

import polars as pl

from pipeline.errors import MAX_REPORTED, Problem
from pipeline.plan.identity import encoded, literal, seeds
from pipeline.spec import vocabulary
from pipeline.spec.config import JobConfig
from pipeline.spec.fallbacks import fallback, with_styles
from pipeline.spec.inputs import uri_column
from pipeline.spec.limits import WATERMARK_TOO_SMALL, denoises, watermarkable
from pipeline.spec.manifest import Inputs


def resolved_rows(inputs: Inputs, cfg: JobConfig) -> pl.DataFrame:
    """Per manifest row: values after the row → style → job fallbacks, resolved URIs, mode."""
    g, job = cfg.generate, cfg.job
    c, lit = pl.col, pl.lit
    df = with_styles(inputs.manifest, inputs.styles).with_columns(
        templated(c("s_prompt_template"), c("prompt")).alias("__prompt"),
        fallback("negative_prompt", "").alias("__negative"),
        fallback("steps", g.steps).alias("__steps"),
        fallback("guidance_scale", g.guidance_scale).cast(pl.Float64).alias("__guidance"),
        fallback("width", g.width).alias("__width"),
        fallback("height", g.height).alias("__height"),
        fallback("num_candidates", job.num_candidates).alias("__n"),
        fallback("keep", job.keep).alias("__keep"),
        fallback("clip_threshold", cfg.filter.clip_threshold).cast(pl.Float64).alias("__clip"),
        c(uri_column("product_image")).alias("__product"),
        c(uri_column("mask")).alias("__mask"),
        c(uri_column("reference_image")).alias("__reference"),
        c(uri_column("lora")).alias("__lora"),
        c(uri_column("style_image")).alias("__style_image"),
        c(uri_column("structure_image")).alias("__structure_image"),
        c(uri_column("logo")).alias("__logo"),
        c(uri_column("headline_font")).alias("__headline_font"),
    )
    # A product photo with transparency and no mask: stage it with its alpha as the mask.
    with_alpha = [uri for uri in df["__product"].drop_nulls().unique().to_list() if inputs.files[uri].has_alpha]
    return df.with_columns(
        c("__product").fill_null(c("__reference")).alias("init_image"),
        pl.when(c("__mask").is_not_null()).then(c("__mask"))
        .when(c("__product").is_in(with_alpha)).then(lit("alpha")).alias("mask"),
    ).with_columns(
        pl.when(c("init_image").is_null()).then(lit(vocabulary.T2I))
        .when(c("mask").is_not_null()).then(lit(vocabulary.INPAINT)).otherwise(lit(vocabulary.IMG2IMG)).alias("mode")
    ).with_columns(
        # the job's default depends on the mode: staging repaints the whole background.
        fallback("strength", pl.when(c("mode") == vocabulary.INPAINT).then(lit(g.inpaint_strength))
                 .otherwise(lit(g.strength))).cast(pl.Float64).alias("__strength"))


def templated(template: pl.Expr, prompt: pl.Expr) -> pl.Expr:
    """A prompt resolved through its style's template (`{prompt}` marks where the words go)."""
    return template.fill_null("{prompt}").str.replace_all("{prompt}", prompt, literal=True)


def with_seeds(df: pl.DataFrame, job_seed: int) -> pl.DataFrame:
    """Each candidate's `__seed` and `seed_source` (row, style or derived), by the rules above."""
    c, lit, k = pl.col, pl.lit, pl.col("candidate")
    n_pinned = c("s_seeds").list.len().fill_null(0)
    row_seeded = c("seed").is_not_null()
    style_seeded = ~row_seeded & (n_pinned > 0)
    df = df.with_columns(
        pl.when(row_seeded & (k == 0)).then(c("seed"))
        .when(style_seeded & (k < n_pinned)).then(c("s_seeds").list.get(k, null_on_oob=True)).alias("__seed"),
        c("s_seeds").list.first().alias("__first_pinned"),
        pl.when(row_seeded).then(lit(vocabulary.ROW_SEED)).when(style_seeded).then(lit(vocabulary.STYLE_SEED))
        .otherwise(lit(vocabulary.DERIVED_SEED)).alias("seed_source"),
    )
    # Hash only the candidates whose seed is derived (not given by the row or the style): the
    # key derive_seed("row", seed, k), ("style", first pinned seed, k) or ("job", job seed, id, k).
    todo = df.filter(c("__seed").is_null())
    if not len(todo):
        return df
    e = {name: encoded(todo[name]) for name in ("seed", "__first_pinned", "id", "candidate")}
    key = todo.select(
        pl.when(row_seeded).then(pl.concat_str(literal("row"), e["seed"], e["candidate"]))
        .when(style_seeded).then(pl.concat_str(literal("style"), e["__first_pinned"], e["candidate"]))
        .otherwise(pl.concat_str(literal("job"), literal(job_seed), e["id"], e["candidate"]))).to_series()
    return df.with_columns(df["__seed"].scatter(df["__seed"].is_null().arg_true(), seeds(key)))


def watermark_problems(rows: pl.DataFrame, inputs: Inputs, cfg: JobConfig) -> tuple[list[Problem], int]:
    """With a watermark, every image a row makes must carry it: a row generating fewer pixels than
    the method needs is refused before the run, by row, column and value (not skipped later)."""
    c = pl.col
    if not cfg.watermark.enabled:
        return [], 0
    bad = rows.filter(~watermarkable(c("__width"), c("__height")))
    first = bad.select("__row", "id", "__width", "__height").head(MAX_REPORTED).iter_rows()
    return [Problem(inputs.manifest_uri, f"{w}×{h} is {WATERMARK_TOO_SMALL} (raise width and height: the "
                    "row's, its style's or [generate]'s)", row=int(r), id=i, column="width")
            for r, i, w, h in first], len(bad)


def denoising_problems(rows: pl.DataFrame, inputs: Inputs) -> tuple[list[Problem], int]:
    """Image-to-image and inpainting run int(steps × strength) denoising steps: a row with none
    would fail every candidate at generation, so it is refused before the run, by row and value."""
    c = pl.col
    bad = rows.filter((c("mode") != vocabulary.T2I) & ~denoises(c("__steps"), c("__strength")))
    first = bad.select("__row", "id", "__strength", "__steps").head(MAX_REPORTED).iter_rows()
    return [Problem(inputs.manifest_uri, f"strength {s:g} × steps {n} gives no denoising step "
                    "(raise the strength or the steps)", row=int(r), id=i, column="strength")
            for r, i, s, n in first], len(bad)
