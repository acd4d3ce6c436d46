"""Assemble the plan: rows × candidates with item ids, judge keys and paths, a chunk at a time.

The plan's assembly and its file: each chunk of whole manifest rows is resolved (`rows.py`),
expanded into candidates (a round of `num_candidates` per row, one more per new round a
reviewer asked for), named (`identity.py`: `item_id` hashes everything that shapes the image
and its file, the idempotency key; input files and the model count by content, never by path),
given its children and decisions (`children.py`), and written as one row group of the plan
file. Pure data (polars + hashlib), no torch, vectorised: a million-row manifest plans in seconds.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline.judge.rules import rules_key
from pipeline.plan.children import with_decisions, with_refinements
from pipeline.plan.identity import hex_ids, keys, literal, with_item_ids
from pipeline.plan.models import fingerprints as model_fingerprints
from pipeline.plan.models import model_columns, planned_models
from pipeline.plan.rows import denoising_problems, resolved_rows, watermark_problems, with_seeds
from pipeline.review.decisions import Decisions
from pipeline.spec import schema, vocabulary
from pipeline.spec.checks import Problems
from pipeline.spec.config import JobConfig
from pipeline.spec.fallbacks import fallback
from pipeline.spec.families import mode_problems, steering_problems
from pipeline.spec.manifest import Inputs, Manifest
from pipeline.storage.layout import image_path_expr

# Manifest rows planned at a time: the plan of a chunk (about 1.1 kB per candidate) is the
# driver's working memory, whatever the manifest's length.
CHUNK_ROWS = 50_000


def check_plan(manifest: Manifest, cfg: JobConfig, chunk_rows: int | None = None) -> None:
    """Every row can be planned and generated, or ManifestError naming all that cannot (capped)."""
    found = Problems()
    for part in manifest.chunks(chunk_rows or CHUNK_ROWS):
        rows = resolved_rows(part, cfg)
        for problems in (denoising_problems(rows, part), watermark_problems(rows, part, cfg),
                         mode_problems(rows, part.styles, cfg, part.manifest_uri),
                         steering_problems(rows, part.styles, cfg, part.manifest_uri, set(manifest.used_styles))):
            found.add(*problems)
    found.raise_any()


def plan_chunks(manifest: Manifest, cfg: JobConfig, chunk_rows: int | None = None,
                decisions: Decisions | None = None) -> Iterator[pa.Table]:
    """The plan, one table per chunk of whole manifest rows, in manifest order (candidates in
    order within each row), under a reviewer's `decisions` (none by default)."""
    check_plan(manifest, cfg, chunk_rows)
    model_fps = model_fingerprints(planned_models(manifest.styles, cfg))
    for part in manifest.chunks(chunk_rows or CHUNK_ROWS):
        yield _plan_rows(part, cfg, model_fps, decisions or Decisions.none())


def build_plan(manifest: Manifest, cfg: JobConfig, decisions: Decisions | None = None) -> pa.Table:
    """The whole plan in memory: one row per candidate, in manifest order, with passthrough
    columns at the end (for small manifests and tests; a run streams `write_plan`'s file)."""
    return pa.concat_tables(list(plan_chunks(manifest, cfg, decisions=decisions)))


@dataclass(frozen=True)
class PlanFile:
    """The plan on the driver's disk, one row group per chunk of whole manifest rows, so a run
    reads it back a chunk at a time."""

    path: Path
    num_rows: int

    def chunks(self, columns: list[str] | None = None) -> Iterator[pa.Table]:
        with pq.ParquetFile(self.path) as f:
            for i in range(f.num_row_groups):
                yield f.read_row_group(i, columns=columns)


def write_plan(manifest: Manifest, cfg: JobConfig, path: Path, chunk_rows: int | None = None,
               decisions: Decisions | None = None) -> PlanFile:
    """Plan chunk by chunk into a Parquet file; ManifestError (before writing) when a row cannot run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    try:
        for chunk in plan_chunks(manifest, cfg, chunk_rows, decisions):
            writer = writer or pq.ParquetWriter(path, chunk.schema)
            writer.write_table(chunk, row_group_size=max(chunk.num_rows, 1))  # a chunk is one row group
            rows += chunk.num_rows
    finally:
        if writer:
            writer.close()
    return PlanFile(path, rows)


def overlay_columns() -> list[pl.Expr]:
    """A row's brand overlay (its style's logo and font, the row's headline), with the defaults
    where the style leaves a setting empty; all null where the style draws nothing."""
    c, lit = pl.col, pl.lit
    text = pl.when(c("s_headline_font").is_not_null() & (c("headline").fill_null("").str.strip_chars() != "")) \
        .then(c("headline"))
    logo = c("__logo").is_not_null()
    drawn = text.is_not_null()
    return [c("__logo").alias("logo"),
            pl.when(logo).then(c("s_logo_position").fill_null(lit("bottom-right"))).alias("logo_position"),
            pl.when(logo).then(c("s_logo_size").fill_null(lit(0.15))).cast(pl.Float64).alias("logo_size"),
            text.alias("headline"),
            pl.when(drawn).then(c("__headline_font")).alias("headline_font"),
            pl.when(drawn).then(c("s_headline_color").fill_null(lit("#FFFFFF"))).alias("headline_color"),
            pl.when(drawn).then(c("s_headline_position").fill_null(lit("top"))).alias("headline_position")]


def with_judging(df: pl.DataFrame, cfg: JobConfig) -> pl.DataFrame:
    """The columns a planned candidate gets once its item id and decision are known: its judge
    key and planned path, and no truncation measured yet."""
    return df.with_columns(
        pl.lit(None, dtype=pl.Boolean).alias("truncated"), pl.lit(None, dtype=pl.String).alias("truncated_by"),
        # not in the item id: a change of rules (or of a reviewer's decision) re-judges, it does
        # not regenerate
        hex_ids(keys(df, literal(rules_key(cfg.filter)), "keep", "clip_threshold", "decision"), 8,
                distinct=True).alias("judge_key"),
        image_path_expr(pl.col("item_id"), cfg.output.format).alias("path"))


def _plan_rows(inputs: Inputs, cfg: JobConfig, model_fps: dict, decisions: Decisions) -> pa.Table:
    """One row per candidate of these manifest rows (a round of `num_candidates`, and one more
    for each new round a reviewer's reject asked for; a candidate per refinement asked for),
    with passthrough columns at the end."""
    c, lit, m = pl.col, pl.lit, cfg.models
    rows = resolved_rows(inputs, cfg).with_columns(model_columns(cfg))
    if decisions.rounds:
        extra = pl.DataFrame({"id": list(decisions.rounds), "__rounds": list(decisions.rounds.values())},
                             schema={"id": pl.String, "__rounds": pl.Int64})
        rows = rows.join(extra, on="id", how="left", maintain_order="left")
    else:
        rows = rows.with_columns(lit(None, dtype=pl.Int64).alias("__rounds"))
    total = c("__n") * (c("__rounds").fill_null(0) + 1)
    df = rows.with_columns(pl.int_ranges(0, total, dtype=pl.Int64).alias("candidate")).explode("candidate")
    df = with_seeds(df, cfg.job.seed).select(
        "id", c("__row").cast(pl.Int64).alias("row"), "candidate", c("prompt").alias("source_prompt"),
        c("__prompt").alias("prompt"), c("__negative").alias("negative_prompt"), "style",
        c("__seed").alias("seed"), "seed_source", c("__model").alias("model"),
        c("__model_revision").alias("model_revision"),
        lit(m.scheduler, dtype=pl.String).alias("scheduler"), "mode", c("__steps").alias("steps"),
        c("__guidance").alias("guidance_scale"),
        pl.when(c("mode") == vocabulary.T2I).then(None).otherwise(c("__strength")).alias("strength"),
        c("__width").alias("width"), c("__height").alias("height"), c("__n").alias("num_candidates"),
        c("__keep").alias("keep"), c("__clip").alias("clip_threshold"), "init_image", "mask",
        c("__reference").alias("style_reference"),
        c("__lora").alias("lora"),
        pl.when(c("__lora").is_not_null()).then(c("s_lora_scale").fill_null(1.0).cast(pl.Float64)).alias("lora_scale"),
        c("__style_image").alias("style_image"),
        pl.when(c("__style_image").is_not_null()).then(fallback("style_image_scale", cfg.generate.style_image_scale)
                                                        .cast(pl.Float64)).alias("style_image_scale"),
        c("__structure_image").alias("structure_image"),
        pl.when(c("__structure_image").is_not_null()).then(fallback("structure_scale", cfg.generate.structure_scale)
                                                            .cast(pl.Float64)).alias("structure_scale"),
        lit(cfg.output.format).alias("format"), lit(None, dtype=pl.String).alias("parent"),
        lit(None, dtype=pl.String).alias("variant"), lit(None, dtype=pl.String).alias("placement"),
        *overlay_columns(),
        lit(cfg.watermark.method if cfg.watermark.enabled else None, dtype=pl.String).alias("watermark"))
    # The fingerprints of this chunk's files only: a mapping of the whole catalogue, hashed
    # again for every chunk, would cost the catalogue's size per chunk.
    used = pl.concat([df[col].drop_nulls() for col in ("init_image", "mask", "lora", "style_image", "structure_image",
                                                       "logo", "headline_font")]
                     ).unique().to_list()
    fingerprints = {uri: "alpha" if uri == "alpha" else inputs.files[uri].fingerprint for uri in used}
    df = with_item_ids(df, fingerprints, model_fps)
    df = with_refinements(df, decisions.refines, inputs, cfg, fingerprints, model_fps)
    df = with_judging(with_decisions(df, decisions.in_force), cfg)
    plan = df.select([f.name for f in schema.PLAN_FIELDS]).to_arrow().cast(schema.PLAN_SCHEMA)
    if inputs.passthrough:
        # Each candidate's manifest row's passthrough values, exact Arrow types kept.
        pt = inputs.raw.take(pc.subtract(plan["row"], inputs.first))
        for name in inputs.passthrough:
            plan = plan.append_column(pt.schema.field(name), pt.column(name))
    return plan
