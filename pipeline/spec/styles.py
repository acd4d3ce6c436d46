"""The styles table: read, typed and checked (names once each, a template with `{prompt}`,
settings in the job spec's limits, pinned seeds, LoRAs as .safetensors only), and its reference
images and LoRAs checked once each; every problem by row, style name, column and value.
"""

from __future__ import annotations

from pathlib import Path

import polars as pl
import pyarrow as pa

from pipeline.errors import ManifestError, show
from pipeline.spec import schema
from pipeline.spec.checks import Check, collect, limit_checks
from pipeline.spec.columns import typed, unread_columns, with_missing
from pipeline.spec.config import JobConfig
from pipeline.spec.inputs import InputFile, check_inputs, inspect_file, inspect_image
from pipeline.spec.limits import LIMITS
from pipeline.spec.parquet import read_parquet
from pipeline.storage import paths


def load_styles(cfg: JobConfig) -> tuple[pl.DataFrame, dict[str, InputFile], list[str]]:
    """The job's styles table read and checked, with its reference images and LoRAs (each file
    checked once): (the table, its files by URI, warnings for the columns no one reads)."""
    table = read_parquet(cfg.job.styles, "styles table") if cfg.job.styles else None
    styles = validate_styles(table, cfg.job.styles)
    files: dict[str, InputFile] = {}
    problems, total = [], 0
    for column, inspect in (("reference_image", inspect_image), ("lora", inspect_file)):
        styles, first, n = check_inputs(styles, column, styles_base_dir(cfg), cfg, inspect, cfg.job.styles,
                                        "style", files)
        problems += first
        total += n
    if total:
        raise ManifestError(problems, total)
    return styles, files, unread_columns(table, schema.STYLES_COLUMNS, cfg.job.styles, all_of_them=True)


def styles_base_dir(cfg: JobConfig) -> str:
    """Relative style URIs (reference images, LoRAs) resolve against the styles file's folder."""
    return paths.parent(cfg.job.styles) if cfg.job.styles else str(Path.cwd())


def validate_styles(table: pa.Table | None, uri: str) -> pl.DataFrame:
    """The styles table, typed and checked; an empty table when the job has none."""
    if table is None:
        table = pa.schema(list(schema.STYLES_COLUMNS.items())).empty_table()
    df = with_missing(typed(table, schema.STYLES_COLUMNS, uri, schema.STYLES_REQUIRED, "style"),
                      schema.STYLES_COLUMNS)
    found, total = collect(df, _style_checks(), uri, id_col="style")
    if total:
        raise ManifestError(found, total)
    return df


def _style_checks() -> list[Check]:
    c = pl.col
    return [
        Check(c("style").is_null() | (c("style").str.strip_chars() == ""), "style", "empty style name"),
        Check(~c("style").is_first_distinct() & c("style").is_not_null(), "style",
              lambda v: f"duplicate style name {show(v)}"),
        Check(c("prompt_template").is_not_null() & ~c("prompt_template").str.contains("{prompt}", literal=True),
              "prompt_template", "template must contain {prompt}"),
        *limit_checks(("steps", "steps"), ("guidance_scale", "guidance_scale"), ("strength", "strength"),
                       ("width", "size"), ("height", "size"), ("num_candidates", "num_candidates"),
                       ("keep", "keep"), ("lora_scale", "lora_scale"), ("clip_threshold", "clip_threshold")),
        Check(c("seeds").is_not_null() & c("seeds").list.eval(
            ~LIMITS["seed"].holds(pl.element()) | pl.element().is_null()).list.any(), "seeds",
            f"seeds must be {LIMITS['seed']}"),
        Check(c("model").is_not_null(), "model",
              lambda v: f"model {show(v)}: per-style models are not supported yet; run one job per model"),
        Check(c("lora").is_not_null() & ~c("lora").str.ends_with(".safetensors"), "lora",
              "a LoRA must be a .safetensors file (pickle weights are never loaded)"),
    ]
