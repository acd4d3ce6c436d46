"""Children: candidates made from another candidate (refinements; channel formats next), and decisions.

A child is a plan row whose `parent` names the item it is made from. Reviewers' `refine`
decisions ask for refinements; each child is planned here, after its parent's row has its
item id, and numbered after its row's rounds of candidates. A new kind of child (a format of
an accepted image for a channel) belongs here, beside refinements. The reviewer's decision in
force on each candidate is attached here too, as the decisions are read in one place.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipeline.plan.identity import keys, literal, seeds, with_item_ids
from pipeline.plan.rows import templated
from pipeline.spec import vocabulary
from pipeline.spec.config import JobConfig
from pipeline.spec.fallbacks import refine_strength
from pipeline.spec.manifest import Inputs


def with_refinements(df: pl.DataFrame, asked: pa.Table, inputs: Inputs, cfg: JobConfig,
                     fingerprints: dict[str, str], model_fps: dict) -> pl.DataFrame:
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
            .otherwise(templated(c("prompt_template"), c("__new_prompt").fill_null(""))).alias("prompt"),
            pl.when(c("mode") == vocabulary.INPAINT).then(lit(vocabulary.INPAINT))
            .otherwise(lit(vocabulary.IMG2IMG)).alias("mode"),
            refine_strength(c("__new_strength"), cfg.generate.refine_strength).cast(pl.Float64).alias("strength"),
            c("item_id").alias("parent"), lit(vocabulary.REFINE_SEED).alias("seed_source"))
        made = made.with_columns(seeds(keys(made, literal("refine"), "parent", "prompt", "strength")).alias("seed"))
        # the parent's item id is replaced by the refinement's own
        made = with_item_ids(made, fingerprints, model_fps).select(*df.columns, c("decided_at").alias("__decided"))
        found.append(made)
        frontier = made.drop("__decided")
    # two asks that resolve alike (no strength, and the default given) are one refinement
    extra = pl.concat(found).sort(["row", "__decided", "item_id"]).unique("item_id", keep="first", maintain_order=True)
    rounds = df.group_by("row").agg(pl.len().alias("__taken"))
    extra = extra.join(rounds, on="row", how="left").with_columns(
        (c("__taken") + pl.int_range(0, pl.len()).over("row")).alias("candidate")).drop("__taken", "__decided")
    return pl.concat([df, extra.select(df.columns)]).sort(["row", "candidate"], maintain_order=True)


def with_decisions(df: pl.DataFrame, in_force: pa.Table) -> pl.DataFrame:
    """Each candidate's decision in force, its note and when it was made (null when none)."""
    columns = ["item_id", "decision", "note", "decided_at"]
    decided = pl.from_arrow(in_force.select(columns)) if in_force.num_rows else None
    if decided is None:
        return df.with_columns(pl.lit(None, dtype=pl.String).alias("decision"),
                               pl.lit(None, dtype=pl.String).alias("note"),
                               pl.lit(None, dtype=pl.Datetime("ms", "UTC")).alias("decided_at"))
    return df.join(decided, on="item_id", how="left", maintain_order="left")
