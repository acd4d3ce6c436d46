"""The row → style → job fallback: a setting a manifest row leaves empty comes from its style,
and one its style leaves empty from the job spec.

One rule for the checks (keep ≤ num_candidates once the fallbacks are applied) and for the plan
(every setting a candidate runs with). A refinement's strength falls back the same way, from the
reviewer's to the job's (`refine_strength`). Which levels a setting has is read from the schemas: a
row can give it where the manifest has such a column, a style where the styles table has one.
"""

from __future__ import annotations

from typing import Any

import polars as pl

from pipeline.spec import schema

STYLE = "s_"  # a style's columns beside its rows' own: `s_<column>`


def with_styles(manifest: pl.DataFrame, styles: pl.DataFrame, columns: tuple[str, ...] | None = None) -> pl.DataFrame:
    """Each manifest row with its style's columns (`columns`, default all) as `s_<column>`, and
    the resolved URIs of its files (`__uri_*`) as they are, in manifest order; nulls where the
    row names no style."""
    named = [pl.col(k) if k.startswith("__") else pl.col(k).alias(STYLE + k) for k in styles.columns
             if k not in ("style", "__row") and (columns is None or k in columns)]
    return manifest.join(styles.select("style", *named), on="style", how="left", maintain_order="left")


def fallback(column: str, job_value: Any) -> pl.Expr:
    """`column` after the fallbacks, in a frame `with_styles` made: the row's own value, else its
    style's, else `job_value` (the job spec's: a value, or an expression)."""
    levels = [name for name, has in ((column, column in schema.MANIFEST_COLUMNS),
                                     (STYLE + column, column in schema.STYLES_COLUMNS)) if has]
    value = pl.col(levels[0])
    for name in levels[1:]:
        value = value.fill_null(pl.col(name))
    return value.fill_null(job_value)


def refine_strength(asked, job_value: float):
    """A refinement's strength: the reviewer's (`asked`), else the job's `[generate].refine_strength`.
    On a number (checking a decisions file) or a polars expression (planning the refinements) alike."""
    if isinstance(asked, pl.Expr):
        return asked.fill_null(job_value)
    return job_value if asked is None else asked
