"""Read and validate the job's manifest and styles table; every problem names file, row, id,
column and value, all at once (capped), never one per run.

Checks are vectorised (polars), so a million-row manifest validates in seconds. The parts:
reading Parquet (`parquet`), the columns' types (`columns`), the styles table (`styles`), input
files (`inputs`), the rules' machinery (`checks`) and the row → style → job fallback (`fallbacks`).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from pipeline.errors import MAX_REPORTED, ManifestError, Problem, show
from pipeline.spec import schema
from pipeline.spec.checks import Check, collect, limit_checks, row_problems
from pipeline.spec.columns import typed, unread_columns, with_missing
from pipeline.spec.config import JobConfig
from pipeline.spec.fallbacks import fallback, with_styles
from pipeline.spec.inputs import InputFile, check_inputs, inspect_image
from pipeline.spec.parquet import read_parquet
from pipeline.spec.styles import load_styles
from pipeline.spec.suggest import suggest
from pipeline.storage import paths

MAX_ID_CHARS = 200
_BAD_ID = re.compile(r"[/\\\x00-\x1f]|^\.{1,2}$|\.\.")


@dataclass(frozen=True)
class Inputs:
    """A validated manifest and styles table, ready to plan."""

    manifest: pl.DataFrame  # typed columns + `__row`
    styles: pl.DataFrame
    manifest_uri: str
    passthrough: tuple[str, ...]
    raw: pa.Table  # the manifest as read: passthrough columns keep their exact Arrow types
    files: dict[str, InputFile]  # every input file, by resolved URI (`uri_column`), checked once
    warnings: tuple[str, ...] = ()  # what runs anyway but looks wrong (a column name close to a known one)

    def only(self, rows: tuple[str, ...]) -> Inputs:
        """These inputs limited to the manifest ids `rows` (all when empty); an unknown id is an
        error, not an empty run."""
        if not rows:
            return self
        unknown = sorted(set(rows) - set(self.manifest["id"].to_list()))
        if unknown:
            raise ManifestError([Problem(self.manifest_uri, f"--rows: no such id(s): {', '.join(unknown)}")])
        return dataclasses.replace(self, manifest=self.manifest.filter(pl.col("id").is_in(list(rows))))


def load_inputs(cfg: JobConfig) -> Inputs:
    """Read and validate the job's manifest and styles; raises ManifestError. Columns that are
    read by no one and look misspelt are in `Inputs.warnings`."""
    styles, files, warnings = load_styles(cfg)
    table = read_parquet(cfg.job.manifest, "manifest")
    inputs = validate_manifest(table, styles, cfg, cfg.job.manifest)
    from pipeline.spec.families import family_warnings

    warnings += family_warnings(inputs.manifest, styles, cfg)
    return dataclasses.replace(inputs, files={**files, **inputs.files}, warnings=(*warnings, *inputs.warnings))


def _with_headline(table: pa.Table, column: str) -> pa.Table:
    """The manifest with its headlines as `headline`, when [overlay].headline_column names another
    column (which stays a passthrough column too)."""
    if column == "headline" or column not in table.column_names:
        return table
    if "headline" in table.column_names:
        table = table.drop_columns(["headline"])
    return table.append_column("headline", table.column(column))


def validate_manifest(table: pa.Table, styles: pl.DataFrame, cfg: JobConfig, uri: str) -> Inputs:
    """Type and check every row; raise ManifestError listing all problems (capped)."""
    source, table = table, _with_headline(table, cfg.overlay.headline_column)
    passthrough = tuple(c for c in source.column_names if c not in schema.CONSUMED_MANIFEST_COLUMNS)
    reserved = [Problem(uri, "name is reserved by the results table; rename the column", column=name)
                for name in passthrough if name in schema.RESERVED_NAMES or name.startswith("__")]
    df = typed(table, schema.MANIFEST_COLUMNS, uri, schema.MANIFEST_REQUIRED, "id", reserved)
    if len(df) == 0:
        raise ManifestError([Problem(uri, "the manifest has no rows")])
    df = with_missing(df, schema.MANIFEST_OPTIONAL)
    found, total = collect(df, _manifest_checks(cfg, styles["style"].drop_nulls().to_list()), uri)
    first, n = row_problems(with_styles(df, styles, ("headline_font",)), _headline_check(cfg), uri)
    found += first
    total += n
    first, n = row_problems(with_styles(df, styles, ("num_candidates", "keep")), _keep_check(cfg), uri)
    found += first
    total += n
    files: dict[str, InputFile] = {}
    for column in ("product_image", "mask"):  # relative to the manifest's own folder or prefix
        df, first, n = check_inputs(df, column, paths.parent(uri), cfg, inspect_image, uri, "id", files)
        found += first[:max(0, MAX_REPORTED - len(found))]
        total += n
    if total:
        found.sort(key=lambda p: (p.row if p.row is not None else -1))
        raise ManifestError(found, total)
    # The passthrough columns as read, their types exact; metadata (pandas', or bytes that are
    # not UTF-8) is not the user's data and is not carried into the results.
    raw = source.select(list(passthrough))
    raw = pa.Table.from_arrays(raw.columns, schema=pa.schema([f.remove_metadata() for f in raw.schema]))
    warnings = unread_columns(table, schema.MANIFEST_COLUMNS, uri, all_of_them=False)
    return Inputs(df, styles, uri, passthrough, raw, files, tuple(warnings))


def _headline_check(cfg: JobConfig) -> Check:
    """A headline is drawn with its style's font: a row with one needs a style that has one."""
    c, name = pl.col, cfg.overlay.headline_column
    return Check((c("headline").fill_null("").str.strip_chars() != "") & c("s_headline_font").is_null(), "headline",
                 lambda v: f"{show(v)}: a headline needs its style's headline_font (a TrueType or OpenType file)"
                 + (f" ([overlay].headline_column = {name!r})" if name != "headline" else ""))


def _keep_check(cfg: JobConfig) -> Check:
    """keep <= num_candidates once the row → style → job fallbacks are applied."""
    n, k = fallback("num_candidates", cfg.job.num_candidates), fallback("keep", cfg.job.keep)
    return Check(k > n, "keep", lambda v: f"keep exceeds num_candidates: {v['k']} > {v['n']}",
                 pl.struct(k.alias("k"), n.alias("n")))


def _manifest_checks(cfg: JobConfig, known_styles: list[str]) -> list[Check]:
    c = pl.col
    most = cfg.job.max_prompt_chars
    return [
        Check(c("id").is_null() | (c("id").str.strip_chars() == ""), "id", "empty id"),
        Check(~c("id").is_first_distinct() & c("id").is_not_null(), "id",
              lambda v: f"duplicate id {show(v)} (an earlier row has it)"),
        Check(c("id").str.contains(_BAD_ID.pattern) | (c("id").str.len_chars() > MAX_ID_CHARS), "id",
              f"ids may not contain path separators, '..' or control characters, nor exceed {MAX_ID_CHARS} chars"),
        Check(c("prompt").is_null() | (c("prompt").str.strip_chars() == ""), "prompt", "empty prompt"),
        Check(c("prompt").str.len_chars() > most, "prompt",
              lambda n: f"prompt of {n} characters is longer than {most} ([job].max_prompt_chars)",
              c("prompt").str.len_chars()),
        Check(c("style").is_not_null() & ~c("style").is_in(known_styles), "style",
              lambda v: f"unknown style {show(v)} "
                        f"({suggest(v, known_styles) if known_styles else 'the job has no styles table'})"),
        *limit_checks(("seed", "seed"), ("num_candidates", "num_candidates"), ("keep", "keep"),
                       ("width", "size"), ("height", "size"), ("strength", "strength")),
        Check(c("mask").is_not_null() & c("product_image").is_null(), "mask", "a mask needs a product_image"),
    ]
