"""Which diffusion model makes each candidate: its style's own `model` (with that style's
`model_revision`), else the job's `[models].diffusion` (with `diffusion_revision`).

A model is named by a `ModelRef` (spec, revision) everywhere it travels: in the plan's `model`
and `model_revision` columns, the item ids (by fingerprint, `identity.py`), the work file's
units (one model each, so the runner routes a unit to an actor that holds it) and the run
record. The revisions never mix: a style's revision pins its own model, the job's the job's.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import polars as pl

from pipeline.spec.config import JobConfig
from pipeline.spec.fallbacks import STYLE


class ModelRef(NamedTuple):
    spec: str
    revision: str | None = None

    def __str__(self) -> str:
        return self.spec + (f"@{self.revision}" if self.revision else "")


@dataclass(frozen=True)
class ModelUse:
    """What a run asks of one model: the styles whose units need it, their LoRAs (loaded when the
    actor starts), and whether any has a style image (its IP-Adapter is loaded) or a structure
    image (its ControlNet is)."""

    styles: tuple[str, ...] = ()
    style_images: bool = False
    structure_images: bool = False
    loras: tuple[str, ...] = ()

    def __or__(self, other: ModelUse) -> ModelUse:
        return ModelUse(tuple(sorted({*self.styles, *other.styles})), self.style_images or other.style_images,
                        self.structure_images or other.structure_images, tuple(sorted({*self.loras, *other.loras})))


def job_model(cfg: JobConfig) -> ModelRef:
    return ModelRef(cfg.models.diffusion, cfg.models.diffusion_revision)


def model_columns(cfg: JobConfig) -> list[pl.Expr]:
    """`__model` and `__model_revision` of each row, in a frame `fallbacks.with_styles` made."""
    own = pl.col(STYLE + "model").is_not_null()
    job = job_model(cfg)
    return [pl.when(own).then(pl.col(STYLE + "model")).otherwise(pl.lit(job.spec)).alias("__model"),
            pl.when(own).then(pl.col(STYLE + "model_revision"))
            .otherwise(pl.lit(job.revision, dtype=pl.String)).alias("__model_revision")]


def planned_models(styles: pl.DataFrame, cfg: JobConfig) -> list[ModelRef]:
    """The job's model, then every style's own, once each: all a plan can name."""
    from pipeline.spec.families import style_models

    return list(dict.fromkeys(ModelRef(*ref) for ref in style_models(styles, cfg).values()))


def fingerprints(refs: list[ModelRef]) -> dict[ModelRef, str]:
    """Each model's fingerprint (what it is, cheaply: `models.fingerprint`)."""
    from pipeline.models.fingerprint import fingerprint

    return {ref: fingerprint(ref.spec, ref.revision) for ref in refs}


def fingerprint_column(df: pl.DataFrame, fps: dict[ModelRef, str]) -> pl.Series:
    """The fingerprint of each row's model (`model`, `model_revision` columns)."""
    key = pl.concat_str(pl.col("model"), pl.col("model_revision").fill_null(""), separator="\x1f")
    mapping = {f"{r.spec}\x1f{r.revision or ''}": fp for r, fp in fps.items()}
    return df.select(key.replace_strict(mapping, return_dtype=pl.String).alias("__model_fp")).to_series()
