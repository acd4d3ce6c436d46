"""The styles table: read, typed and checked (names once each, a template with `{prompt}`,
settings in the job spec's limits, pinned seeds, LoRAs as .safetensors only), and its reference
images, LoRAs and models checked once each; every problem by row, style name, column and value.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from pipeline.errors import MAX_REPORTED, ManifestError, Problem, show
from pipeline.spec import channel_formats, schema
from pipeline.spec.checks import Check, collect, limit_checks
from pipeline.spec.columns import typed, unread_columns, with_missing
from pipeline.spec.config import JobConfig
from pipeline.spec.inputs import InputFile, check_inputs, inspect_file, inspect_font, inspect_image
from pipeline.spec.job_checks import embedded_problem
from pipeline.spec.limits import CHOICES, LIMITS, WATERMARK_TOO_SMALL
from pipeline.spec.parquet import read_parquet
from pipeline.storage import paths


def load_styles(cfg: JobConfig) -> tuple[pl.DataFrame, dict[str, InputFile], list[str]]:
    """The job's styles table read and checked, with its reference images and LoRAs (each file
    checked once): (the table, its files by URI, warnings for the columns no one reads)."""
    table = read_parquet(cfg.job.styles, "styles table") if cfg.job.styles else None
    styles = validate_styles(table, cfg.job.styles, cfg.formats.sizes, cfg.overlay.keep_clean)
    found, n = collect(styles, _adapter_checks(cfg), cfg.job.styles, id_col="style")
    files: dict[str, InputFile] = {}
    problems, total = found, n
    for column, inspect in (("reference_image", inspect_image), ("lora", inspect_file), ("style_image", inspect_image),
                            ("structure_image", inspect_image), ("logo", inspect_image),
                            ("headline_font", inspect_font)):
        styles, first, n = check_inputs(styles, column, styles_base_dir(cfg), cfg, inspect, cfg.job.styles,
                                        "style", files)
        problems += first
        total += n
    styles, first, n = _with_models(styles, cfg)
    problems += first
    total += n
    if total:
        raise ManifestError(problems, total)
    return styles, files, unread_columns(table, schema.STYLES_COLUMNS, cfg.job.styles, all_of_them=True)


def _with_models(styles: pl.DataFrame, cfg: JobConfig) -> tuple[pl.DataFrame, list[Problem], int]:
    """Each style's own diffusion model resolved (a relative folder against the styles file's)
    and found on this machine: an embedded diffusion model, a local folder, or a hub id in the
    local cache. A missing one stops the job here, naming the style, not at the first unit."""
    from pipeline.models.loading import unavailable

    resolved, why = {}, {}
    for model, revision in styles.select("model", "model_revision").unique().drop_nulls("model").iter_rows():
        resolved[model] = paths.resolve_model(model, styles_base_dir(cfg))
        problem = embedded_problem(model, "diffusion") or unavailable(resolved[model], revision)
        if problem:
            pinned = f" at revision {show(revision)}" if revision else ""
            why[(model, revision)] = f"model {show(model)}{pinned}: {problem}"
    found = [Problem(cfg.job.styles, why[(m, v)], row=int(r), id=name, column="model")
             for r, name, m, v in styles.select("__row", "style", "model", "model_revision").iter_rows()
             if (m, v) in why]
    styles = styles.with_columns(pl.col("model").replace_strict(resolved, default=None, return_dtype=pl.String))
    return styles, found[:MAX_REPORTED], len(found)


def _adapter_checks(cfg: JobConfig) -> list[Check]:
    """A style image needs an IP-Adapter and a structure image a ControlNet: the job names them;
    with a watermark, a style's exact-size formats must be large enough to carry it."""
    c, m = pl.col, cfg.models
    small = lambda v: channel_formats.unwatermarkable(list(v))  # noqa: E731
    too_small = c("formats").map_elements(lambda v: bool(small(v)), pl.Boolean, skip_nulls=True).fill_null(False)
    watermarked = [Check(pl.lit(cfg.watermark.enabled) & too_small, "formats",
                         lambda v: f"{', '.join(small(v))} is {WATERMARK_TOO_SMALL}")]
    return watermarked + [Check(c(column).is_not_null() & pl.lit(adapter is None), column,
                  lambda v, key=key, name=name: f"{show(v)} needs [models].{key} (the {name}; "
                  f"embedded:tiny-{key.replace('_', '-')} for the embedded models)")
            for column, key, adapter, name in (
                ("style_image", "ip_adapter", m.ip_adapter, "IP-Adapter and its image encoder"),
                ("structure_image", "controlnet", m.controlnet, "ControlNet"))]


def styles_base_dir(cfg: JobConfig) -> str:
    """Relative style URIs (reference images, LoRAs) resolve against the styles file's folder."""
    return paths.parent(cfg.job.styles) if cfg.job.styles else str(Path.cwd())


def validate_styles(table: pa.Table | None, uri: str, job_formats: tuple[str, ...] = (),
                    keep_clean: bool = True) -> pl.DataFrame:
    """The styles table, typed and checked; an empty table when the job has none."""
    if table is None:
        table = pa.schema(list(schema.STYLES_COLUMNS.items())).empty_table()
    df = with_missing(typed(table, schema.STYLES_COLUMNS, uri, schema.STYLES_REQUIRED, "style"),
                      schema.STYLES_COLUMNS)
    found, total = collect(df, _style_checks(job_formats, keep_clean), uri, id_col="style")
    if total:
        raise ManifestError(found, total)
    return df


def _style_checks(job_formats: tuple[str, ...] = (), keep_clean: bool = True) -> list[Check]:
    c = pl.col
    return [
        Check(c("style").is_null() | (c("style").str.strip_chars() == ""), "style", "empty style name"),
        Check(~c("style").is_first_distinct() & c("style").is_not_null(), "style",
              lambda v: f"duplicate style name {show(v)}"),
        Check(c("prompt_template").is_not_null() & ~c("prompt_template").str.contains("{prompt}", literal=True),
              "prompt_template", "template must contain {prompt}"),
        *limit_checks(("steps", "steps"), ("guidance_scale", "guidance_scale"), ("strength", "strength"),
                       ("width", "size"), ("height", "size"), ("num_candidates", "num_candidates"),
                       ("keep", "keep"), ("lora_scale", "lora_scale"), ("clip_threshold", "clip_threshold"),
                       ("style_image_scale", "style_image_scale"), ("structure_scale", "structure_scale")),
        Check(c("seeds").is_not_null() & c("seeds").list.eval(
            ~LIMITS["seed"].holds(pl.element()) | pl.element().is_null()).list.any(), "seeds",
            f"seeds must be {LIMITS['seed']}"),
        Check(c("model_revision").is_not_null() & c("model").is_null(), "model_revision",
              "model_revision pins the style's own model: give its model too (the job's model's "
              "revision is [models].diffusion_revision)"),
        Check(c("formats").map_elements(lambda v: bool(channel_formats.problems(v.to_list())), pl.Boolean,
                                        skip_nulls=True).fill_null(False), "formats",
              lambda v: "; ".join(channel_formats.problems(v))),
        *[Check(c(col).is_not_null() & ~c(col).is_in(CHOICES["position"]), col,
                lambda v: f"{show(v)} is not a position: one of {', '.join(CHOICES['position'])}")
          for col in ("logo_position", "headline_position")],
        Check(c("headline_color").is_not_null() & ~c("headline_color").str.contains(r"^#[0-9A-Fa-f]{6}$"),
              "headline_color", lambda v: f"{show(v)} is not a colour: \"#RRGGBB\", such as \"#FFFFFF\""),
        *limit_checks(("logo_size", "logo_size")),
        Check((c("logo").is_not_null() | c("headline_font").is_not_null()) & pl.lit(not keep_clean)
              & (c("formats").list.len() > 0).fill_null(pl.lit(bool(job_formats))), "formats",
              lambda v: "channel formats of a style with a brand overlay are outpainted from the clean image: "
                        "set [overlay].keep_clean = true",
              pl.col("formats").cast(pl.List(pl.String)).list.join(", ").fill_null(", ".join(job_formats))),
        Check(c("lora").is_not_null() & ~c("lora").str.ends_with(".safetensors"), "lora",
              "a LoRA must be a .safetensors file (pickle weights are never loaded)"),
    ]
