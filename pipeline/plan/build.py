"""Expand manifest rows × candidates into the plan: resolved prompts, seeds, item ids, paths.

Pure data (polars + hashlib), no torch, vectorised: only the blake2b hashes are computed per
value, so a million-row manifest plans in seconds. What is hashed is the canonical encoding of
typed values (`identity.py`), never a library's formatting of them.

Seeds (DESIGN.md "Seeds and reproducibility"):
- the row's `seed` is candidate 0's seed; candidate k > 0 derives from it;
- else the style's pinned `seeds`, in order; candidates past the list derive from its first
  seed, so every product of a style starts from the same noise;
- else blake2b("job", job seed, row id, candidate index).
`item_id` hashes everything that shapes the image and its file: the idempotency key. Input
files and the model count by content (fingerprints), never by path.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.errors import MAX_REPORTED, ManifestError, Problem
from pipeline.judge.rules import rules_key
from pipeline.models.fingerprint import fingerprint as model_fingerprint
from pipeline.plan.identity import derive_seed as derive_seed  # the one seed function, re-exported
from pipeline.plan.identity import encoded, hex_ids, keys, literal, seeds
from pipeline.review.decisions import Decisions
from pipeline.spec import schema, vocabulary
from pipeline.spec.config import JobConfig
from pipeline.spec.fallbacks import fallback, with_styles
from pipeline.spec.inputs import uri_column
from pipeline.spec.limits import denoises
from pipeline.spec.manifest import Inputs
from pipeline.storage.layout import image_path_expr

# Bump when what an item id hashes changes, so folders of older releases rerun cleanly.
# v3: the canonical typed encoding of identity.py (v2 hashed polars' string formatting).
ITEM_RECIPE = "item-v3"
# What shapes an image and its file. Inputs count by content (fingerprints), never by path:
# a replaced product photo regenerates, the same catalogue on another mount does not.
ITEM_KEY_COLUMNS = ("id", "candidate", "prompt", "negative_prompt", "style", "seed", "__model_fp",
                    "model_revision", "scheduler", "mode", "steps", "guidance_scale", "strength",
                    "width", "height", "__init_fp", "__mask_fp", "__lora_fp", "lora_scale", "format", "parent")


def _rows(inputs: Inputs, cfg: JobConfig) -> pl.DataFrame:
    """Per manifest row: values after the row → style → job fallbacks, resolved URIs, mode."""
    g, job = cfg.generate, cfg.job
    c, lit = pl.col, pl.lit
    df = with_styles(inputs.manifest, inputs.styles).with_columns(
        _templated(c("s_prompt_template"), c("prompt")).alias("__prompt"),
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
    )
    # A product photo with transparency and no mask: stage it with its alpha as the mask.
    with_alpha = [uri for uri, f in inputs.files.items() if f.has_alpha]
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


def _templated(template: pl.Expr, prompt: pl.Expr) -> pl.Expr:
    """A prompt resolved through its style's template (`{prompt}` marks where the words go)."""
    return template.fill_null("{prompt}").str.replace_all("{prompt}", prompt, literal=True)


def _seeds(df: pl.DataFrame, job_seed: int) -> pl.DataFrame:
    c, lit, k = pl.col, pl.lit, pl.col("candidate")
    n_pinned = c("s_seeds").list.len().fill_null(0)
    row_seeded = c("seed").is_not_null()
    style_seeded = ~row_seeded & (n_pinned > 0)
    df = df.with_columns(
        pl.when(row_seeded & (k == 0)).then(c("seed"))
        .when(style_seeded & (k < n_pinned)).then(c("s_seeds").list.get(k, null_on_oob=True)).alias("__seed"),
        c("s_seeds").list.first().alias("__first_pinned"),
        pl.when(row_seeded).then(lit("row")).when(style_seeded).then(lit("style"))
        .otherwise(lit("derived")).alias("seed_source"),
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


def _denoising_problems(rows: pl.DataFrame, inputs: Inputs) -> tuple[list[Problem], int]:
    """Image-to-image and inpainting run int(steps × strength) denoising steps: a row with none
    would fail every candidate at generation, so it is refused before the run, by row and value."""
    c = pl.col
    bad = rows.filter((c("mode") != vocabulary.T2I) & ~denoises(c("__steps"), c("__strength")))
    first = bad.select("__row", "id", "__strength", "__steps").head(MAX_REPORTED).iter_rows()
    return [Problem(inputs.manifest_uri, f"strength {s:g} × steps {n} gives no denoising step "
                    "(raise the strength or the steps)", row=int(r), id=i, column="strength")
            for r, i, s, n in first], len(bad)


# Manifest rows planned at a time: the plan of a chunk (about 1.1 kB per candidate) is the
# driver's working memory, whatever the manifest's length.
CHUNK_ROWS = 50_000


def _chunks(inputs: Inputs, chunk_rows: int | None) -> Iterator[Inputs]:
    """The inputs in slices of whole manifest rows (zero-copy; `__row` keeps the row numbers)."""
    chunk_rows = chunk_rows or CHUNK_ROWS
    for start in range(0, max(len(inputs.manifest), 1), chunk_rows):
        yield dataclasses.replace(inputs, manifest=inputs.manifest.slice(start, chunk_rows))


def check_plan(inputs: Inputs, cfg: JobConfig, chunk_rows: int | None = None) -> None:
    """Every row can be planned and generated, or ManifestError naming all that cannot (capped)."""
    problems, total = [], 0
    for part in _chunks(inputs, chunk_rows):
        found, n = _denoising_problems(_rows(part, cfg), part)
        problems += found[:MAX_REPORTED - len(problems)]
        total += n
    if total:
        raise ManifestError(problems, total)


def plan_chunks(inputs: Inputs, cfg: JobConfig, chunk_rows: int | None = None,
                decisions: Decisions | None = None) -> Iterator[pa.Table]:
    """The plan, one table per chunk of whole manifest rows, in manifest order (candidates in
    order within each row), under a reviewer's `decisions` (none by default)."""
    check_plan(inputs, cfg, chunk_rows)
    model_fp = model_fingerprint(cfg.models.diffusion, cfg.models.diffusion_revision)
    for part in _chunks(inputs, chunk_rows):
        yield _plan_rows(part, cfg, model_fp, decisions or Decisions.none())


def build_plan(inputs: Inputs, cfg: JobConfig, decisions: Decisions | None = None) -> pa.Table:
    """The whole plan in memory: one row per candidate, in manifest order, with passthrough
    columns at the end (for small manifests and tests; a run streams `write_plan`'s file)."""
    return pa.concat_tables(list(plan_chunks(inputs, cfg, decisions=decisions)))


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


def write_plan(inputs: Inputs, cfg: JobConfig, path: Path, chunk_rows: int | None = None,
               decisions: Decisions | None = None) -> PlanFile:
    """Plan chunk by chunk into a Parquet file; ManifestError (before writing) when a row cannot run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    writer, rows = None, 0
    try:
        for chunk in plan_chunks(inputs, cfg, chunk_rows, decisions):
            writer = writer or pq.ParquetWriter(path, chunk.schema)
            writer.write_table(chunk, row_group_size=max(chunk.num_rows, 1))  # a chunk is one row group
            rows += chunk.num_rows
    finally:
        if writer:
            writer.close()
    return PlanFile(path, rows)


def _plan_rows(inputs: Inputs, cfg: JobConfig, model_fp: str, decisions: Decisions) -> pa.Table:
    """One row per candidate of these manifest rows (a round of `num_candidates`, and one more
    for each new round a reviewer's reject asked for; a candidate per refinement asked for),
    with passthrough columns at the end."""
    c, lit, m = pl.col, pl.lit, cfg.models
    rows = _rows(inputs, cfg)
    if decisions.rounds:
        extra = pl.DataFrame({"id": list(decisions.rounds), "__rounds": list(decisions.rounds.values())},
                             schema={"id": pl.String, "__rounds": pl.Int64})
        rows = rows.join(extra, on="id", how="left", maintain_order="left")
    else:
        rows = rows.with_columns(lit(None, dtype=pl.Int64).alias("__rounds"))
    total = c("__n") * (c("__rounds").fill_null(0) + 1)
    df = rows.with_columns(pl.int_ranges(0, total, dtype=pl.Int64).alias("candidate")).explode("candidate")
    df = _seeds(df, cfg.job.seed).select(
        "id", c("__row").cast(pl.Int64).alias("row"), "candidate", c("prompt").alias("source_prompt"),
        c("__prompt").alias("prompt"), c("__negative").alias("negative_prompt"), "style",
        c("__seed").alias("seed"), "seed_source", lit(m.diffusion).alias("model"),
        lit(m.diffusion_revision, dtype=pl.String).alias("model_revision"),
        lit(m.scheduler, dtype=pl.String).alias("scheduler"), "mode", c("__steps").alias("steps"),
        c("__guidance").alias("guidance_scale"),
        pl.when(c("mode") == vocabulary.T2I).then(None).otherwise(c("__strength")).alias("strength"),
        c("__width").alias("width"), c("__height").alias("height"), c("__n").alias("num_candidates"),
        c("__keep").alias("keep"), c("__clip").alias("clip_threshold"), "init_image", "mask",
        c("__reference").alias("style_reference"),
        c("__lora").alias("lora"),
        pl.when(c("__lora").is_not_null()).then(c("s_lora_scale").fill_null(1.0).cast(pl.Float64)).alias("lora_scale"),
        lit(cfg.output.format).alias("format"), lit(None, dtype=pl.String).alias("parent"))
    # The fingerprints of this chunk's files only: a mapping of the whole catalogue, hashed
    # again for every chunk, would cost the catalogue's size per chunk.
    used = pl.concat([df[col].drop_nulls() for col in ("init_image", "mask", "lora")]).unique().to_list()
    fingerprints = {uri: "alpha" if uri == "alpha" else inputs.files[uri].fingerprint for uri in used}
    df = _with_item_ids(df, fingerprints, model_fp)
    df = _with_refinements(df, decisions.refines, inputs, cfg, fingerprints, model_fp)
    df = _with_decisions(df, decisions.in_force)
    df = df.with_columns(
        lit(None, dtype=pl.Boolean).alias("truncated"),
        # not in the item id: a change of rules (or of a reviewer's decision) re-judges, it does
        # not regenerate
        hex_ids(keys(df, literal(rules_key(cfg.filter)), "keep", "clip_threshold", "decision"), 8,
                distinct=True).alias("judge_key"),
        image_path_expr(c("item_id"), cfg.output.format).alias("path"))
    plan = df.select([f.name for f in schema.PLAN_FIELDS]).to_arrow().cast(schema.PLAN_SCHEMA)
    if inputs.passthrough:
        # Each candidate's manifest row's passthrough values, exact Arrow types kept.
        pt = inputs.raw.take(plan["row"])
        for name in inputs.passthrough:
            plan = plan.append_column(pt.schema.field(name), pt.column(name))
    return plan


def _with_item_ids(df: pl.DataFrame, fingerprints: dict[str, str], model_fp: str) -> pl.DataFrame:
    """`item_id` of each candidate: everything that shapes its image and file, inputs by content.
    A refinement's starting image is its parent's image, which its parent's item id names."""
    c, lit = pl.col, pl.lit
    fp = lambda col: c(col).replace_strict(fingerprints, return_dtype=pl.String)  # noqa: E731 — every URI was checked
    named = df.with_columns(lit(model_fp, dtype=pl.String).alias("__model_fp"), fp("init_image").alias("__init_fp"),
                            fp("mask").alias("__mask_fp"), fp("lora").alias("__lora_fp"))
    return df.with_columns(hex_ids(keys(named, literal(ITEM_RECIPE), *ITEM_KEY_COLUMNS)).alias("item_id"))


def _with_refinements(df: pl.DataFrame, asked: pa.Table, inputs: Inputs, cfg: JobConfig,
                      fingerprints: dict[str, str], model_fp: str) -> pl.DataFrame:
    """The candidates reviewers' `refine` decisions ask for, added to their rows (a refinement
    of a refinement too): the parent's settings, the changed prompt (through the style's
    template) and strength, image-to-image from the parent's image (inpainting for a staged
    row, the product kept), and a seed derived from what was asked. Each row's refinements are
    numbered after its rounds of candidates, in the order they were asked for (a number that
    moves when a new round is added to the row; the item id is what names a candidate)."""
    c, lit = pl.col, pl.lit
    refines = pl.from_arrow(asked)
    if not refines.height:
        return df
    templates = inputs.styles.select("style", c("prompt_template") if "prompt_template" in inputs.styles.columns
                                     else lit(None, dtype=pl.String).alias("prompt_template"))
    found, frontier = [], df
    while True:
        parents = frontier.join(refines.rename({"prompt": "__new_prompt", "strength": "__new_strength"}),
                                on="item_id", how="inner").join(templates, on="style", how="left")
        if not parents.height:
            break
        made = parents.with_columns(
            c("__new_prompt").fill_null(c("source_prompt")).alias("source_prompt"),
            pl.when(c("__new_prompt").is_null()).then(c("prompt"))
            .otherwise(_templated(c("prompt_template"), c("__new_prompt").fill_null(""))).alias("prompt"),
            pl.when(c("mode") == vocabulary.INPAINT).then(lit(vocabulary.INPAINT))
            .otherwise(lit(vocabulary.IMG2IMG)).alias("mode"),
            c("__new_strength").fill_null(cfg.generate.refine_strength).cast(pl.Float64).alias("strength"),
            c("item_id").alias("parent"), lit("refine").alias("seed_source"))
        made = made.with_columns(seeds(keys(made, literal("refine"), "parent", "prompt", "strength")).alias("seed"))
        # the parent's item id is replaced by the refinement's own
        made = _with_item_ids(made, fingerprints, model_fp).select(*df.columns, c("decided_at").alias("__decided"))
        found.append(made)
        frontier = made.drop("__decided")
    # two asks that resolve alike (no strength, and the default given) are one refinement
    extra = pl.concat(found).sort(["row", "__decided", "item_id"]).unique("item_id", keep="first", maintain_order=True)
    rounds = df.group_by("row").agg(pl.len().alias("__taken"))
    extra = extra.join(rounds, on="row", how="left").with_columns(
        (c("__taken") + pl.int_range(0, pl.len()).over("row")).alias("candidate")).drop("__taken", "__decided")
    return pl.concat([df, extra.select(df.columns)]).sort(["row", "candidate"], maintain_order=True)


def _with_decisions(df: pl.DataFrame, in_force: pa.Table) -> pl.DataFrame:
    """Each candidate's decision in force, its note and when it was made (null when none)."""
    columns = ["item_id", "decision", "note", "decided_at"]
    decided = pl.from_arrow(in_force.select(columns)) if in_force.num_rows else None
    if decided is None:
        return df.with_columns(pl.lit(None, dtype=pl.String).alias("decision"),
                               pl.lit(None, dtype=pl.String).alias("note"),
                               pl.lit(None, dtype=pl.Datetime("ms", "UTC")).alias("decided_at"))
    return df.join(decided, on="item_id", how="left", maintain_order="left")
