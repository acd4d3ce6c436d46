"""Channel formats as children: for each image that is written (or a reviewer approved), one
candidate per format its style asks for, outpainted from it (stages/outpaint.py).

Formats are planned from outcomes, not from the manifest: which candidate of a row is written
is known only once it is judged. So a run plans them after its manifest rows are committed, in
a second plan file of the same schema, and runs them through the same resume, stream and
commit. A rerun plans them again from everything committed: a format already made is skipped,
a format added to the job is the only new work.

A format's item id is its parent's (which names everything about the source by content) with
the format's own settings: the format, the placement, the strength, the output format and how
many times a reviewer rejected it. Its seed derives from the same: a reject asks for the same
format again with a fresh seed, planned beside the rejected one.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.plan.build import PlanFile, with_judging
from pipeline.plan.canvas import canvas_for
from pipeline.plan.children import with_decisions
from pipeline.plan.identity import hex_ids, keys, literal, seeds
from pipeline.spec import channel_formats, vocabulary
from pipeline.spec.config import JobConfig

FORMAT_RECIPE = "format-v1"  # bump when what a format's item id hashes changes


def wanted(cfg: JobConfig, styles: pl.DataFrame) -> bool:
    """Whether any image of this job gets formats (the job's sizes, or a style's own)."""
    return bool(cfg.formats.sizes) or bool(styles["formats"].list.len().fill_null(0).sum())


def style_formats(cfg: JobConfig, styles: pl.DataFrame) -> pl.DataFrame:
    """Style → the format names its images get: its own `formats`, else the job's sizes; a row
    without a style gets the job's. Columns `style`, `variant` (one row per pair)."""
    job = list(cfg.formats.sizes)
    own = styles.select("style", pl.col("formats").fill_null(pl.lit(job, dtype=pl.List(pl.String))))
    none = pl.DataFrame({"style": [None], "formats": [job]}, schema={"style": pl.String, "formats": pl.List(pl.String)})
    return pl.concat([own, none]).explode("formats").drop_nulls("formats").rename({"formats": "variant"})


def expected(plan: pa.Table, cfg: JobConfig, styles: pl.DataFrame) -> pl.DataFrame:
    """The formats a chunk of the manifest plan will ask for once it is judged, for an estimate
    before anything runs: each row's kept images (`keep`) times its style's formats, shaped as
    `review.cost.shapes` counts them (mode outpaint, the canvas, the denoising steps the format's
    strength leaves). With `[formats].from = "approved"` it is the most there can be."""
    c = pl.col
    base = pl.from_arrow(plan.select(["id", "style", "model", "width", "height", "steps", "keep", "parent"]))
    rows = base.filter(c("parent").is_null()).unique("id", maintain_order=True)
    wanted_ = rows.join(style_formats(cfg, styles), on="style", how="inner", nulls_equal=True, maintain_order="left")
    if not wanted_.height:
        return pl.DataFrame()
    canvases = {(w, h, v): canvas_for(w, h, channel_formats.parse(v), cfg.formats.placement)
                for w, h, v in wanted_.select("width", "height", "variant").unique().iter_rows()}
    shaped = wanted_.with_columns(
        pl.lit(vocabulary.OUTPAINT).alias("mode"),
        pl.struct("width", "height", "variant").map_elements(
            lambda s: canvases[(s["width"], s["height"], s["variant"])].width, pl.Int64).alias("__w"),
        pl.struct("width", "height", "variant").map_elements(
            lambda s: canvases[(s["width"], s["height"], s["variant"])].height, pl.Int64).alias("__h"),
        (c("steps") * cfg.formats.strength).floor().cast(pl.Int64).clip(lower_bound=1).alias("__steps"))
    return (shaped.select(c("style").fill_null("-"), "mode", "model", c("__w").alias("width"), c("__h").alias("height"),
                          c("__steps").alias("steps"), c("keep").alias("len"))
            .group_by(["style", "mode", "model", "width", "height", "steps"], maintain_order=True)
            .agg(c("len").sum().cast(pl.UInt32)))


def plan_formats(plan: PlanFile, statuses: Iterable[pa.Array], cfg: JobConfig, styles: pl.DataFrame, in_force: pa.Table,
                 path: Path) -> PlanFile:
    """The format children of `plan`'s images that are written (or approved, by `[formats].from`),
    as a plan file beside it (`path`). `statuses`: each plan chunk's committed status (null:
    none), chunk by chunk in plan order."""
    writer, rows = None, 0
    try:
        for chunk in _chunks(plan, statuses, cfg, style_formats(cfg, styles), in_force):
            writer = writer or pq.ParquetWriter(path, chunk.schema)
            writer.write_table(chunk, row_group_size=max(chunk.num_rows, 1))
            rows += chunk.num_rows
        if writer is None:  # nothing to make: an empty plan of the same schema
            writer = pq.ParquetWriter(path, pq.read_schema(plan.path))
    finally:
        if writer:
            writer.close()
    return PlanFile(path, rows)


def _chunks(plan: PlanFile, statuses: Iterable[pa.Array], cfg: JobConfig, formats: pl.DataFrame,
            in_force: pa.Table) -> Iterator[pa.Table]:
    for chunk, status in zip(plan.chunks(), statuses, strict=True):
        sources = pl.from_arrow(chunk).with_columns(pl.Series("__status", status.to_pylist(), pl.String))
        sources = sources.filter(pl.col("__status") == vocabulary.WRITTEN)
        if cfg.formats.source == "approved":
            sources = sources.filter(pl.col("decision") == vocabulary.APPROVE)
        if not sources.height:
            continue
        made = _children(sources.drop("__status"), chunk, cfg, formats, in_force)
        if made.height:
            yield made.to_arrow().cast(chunk.schema)


def _children(sources: pl.DataFrame, chunk: pa.Table, cfg: JobConfig, formats: pl.DataFrame,
              in_force: pa.Table) -> pl.DataFrame:
    """Each source's formats, and a fresh one after each reject, numbered after the row's candidates."""
    c, lit = pl.col, pl.lit
    columns = sources.columns
    base = sources.drop("variant").join(formats, on="style", how="inner", nulls_equal=True, maintain_order="left")
    if not base.height:
        return base.select(columns)
    canvases = {(w, h, v): canvas_for(w, h, channel_formats.parse(v), cfg.formats.placement)
                for w, h, v in base.select("width", "height", "variant").unique().iter_rows()}
    base = base.with_columns(
        c("item_id").alias("parent"), lit(cfg.formats.placement).alias("placement"),
        lit(vocabulary.OUTPAINT).alias("mode"), lit(cfg.formats.strength, dtype=pl.Float64).alias("strength"),
        lit(None, dtype=pl.String).alias("structure_image"), lit(None, dtype=pl.Float64).alias("structure_scale"),
        lit(vocabulary.FORMAT_SEED).alias("seed_source"),
        pl.struct("width", "height", "variant").map_elements(
            lambda s: canvases[(s["width"], s["height"], s["variant"])].width, pl.Int64).alias("__w"),
        pl.struct("width", "height", "variant").map_elements(
            lambda s: canvases[(s["width"], s["height"], s["variant"])].height, pl.Int64).alias("__h"),
    ).with_columns(c("__w").alias("width"), c("__h").alias("height")).drop("__w", "__h")
    made, frontier, attempt = [], base, 0
    while frontier.height:
        named = _named(frontier, attempt)
        decided = with_decisions(named.drop("decision", "note", "decided_at"), in_force)
        made.append(decided)
        frontier = base.join(decided.filter(c("decision") == vocabulary.REJECT).select("parent", "variant"),
                             on=["parent", "variant"], how="semi")  # rejected: the same format, a fresh seed
        base, attempt = frontier, attempt + 1
    out = pl.concat(made).sort(["row", "candidate", "variant", "__attempt"], maintain_order=True)
    taken = pl.from_arrow(chunk.select(["id", "candidate"])).group_by("id").agg((c("candidate").max() + 1)
                                                                                  .alias("__taken"))
    out = out.join(taken, on="id", how="left").with_columns(
        (c("__taken") + pl.int_range(0, pl.len()).over("id")).alias("candidate"))
    return with_judging(out, cfg).select(columns)


def _named(df: pl.DataFrame, attempt: int) -> pl.DataFrame:
    """Seeds and item ids of the `attempt`-th go at each format (0 until a reviewer rejects one)."""
    df = df.with_columns(pl.lit(attempt, dtype=pl.Int64).alias("__attempt"))
    key = keys(df, literal(FORMAT_RECIPE), "parent", "variant", "placement", "strength", "format", "__attempt")
    return df.with_columns(seeds(key).alias("seed"), hex_ids(key).alias("item_id"))
