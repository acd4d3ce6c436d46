"""Read and validate the job's manifest and styles table; every problem names file, row, id,
column and value, all at once (capped), never one per run.

The manifest is read a chunk at a time, twice: once to validate it (nothing kept but the
problems, the input files' fingerprints, the styles used and a spill of ids on the driver's
disk for duplicates), then again by the plan (`Manifest.chunks`). So a catalogue of ten million
rows is never held whole. Checks are vectorised (polars) over a chunk. The parts: reading
Parquet (`parquet`), the columns' types (`columns`), the styles table (`styles`), input files
(`inputs`), duplicate ids (`duplicates`), the rules' machinery (`checks`) and the row → style →
job fallback (`fallbacks`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterator
from dataclasses import dataclass

import polars as pl
import pyarrow as pa

from pipeline.errors import ManifestError, Problem, show
from pipeline.spec import schema
from pipeline.spec.checks import Check, Problems, collect, limit_checks, row_problems
from pipeline.spec.columns import column_problems, typed_rows, unread_columns, with_missing
from pipeline.spec.config import JobConfig
from pipeline.spec.duplicates import DuplicateIds
from pipeline.spec.fallbacks import fallback, with_styles
from pipeline.spec.families import family_warnings, negative_styles
from pipeline.spec.inputs import InputFile, check_inputs, inspect_image, with_uris
from pipeline.spec.parquet import UserTable, open_parquet
from pipeline.spec.styles import load_styles
from pipeline.spec.suggest import suggest
from pipeline.storage import paths

MAX_ID_CHARS = 200
_BAD_ID = re.compile(r"[/\\\x00-\x1f]|^\.{1,2}$|\.\.")
READ_ROWS = 100_000  # manifest rows validated at a time
FILE_COLUMNS = ("product_image", "mask")  # input files a row names, relative to the manifest's folder or prefix


@dataclass(frozen=True)
class Inputs:
    """A chunk of validated manifest rows, ready to plan."""

    manifest: pl.DataFrame  # typed columns + `__row`, the row's number in the whole manifest
    styles: pl.DataFrame
    manifest_uri: str
    passthrough: tuple[str, ...]
    raw: pa.Table  # the chunk's passthrough columns as read (exact Arrow types); its first row is row `first`
    files: dict[str, InputFile]  # every input file, by resolved URI (`uri_column`), checked once
    first: int = 0


@dataclass(frozen=True)
class Manifest:
    """A validated manifest and styles table: what planning needs, the rows read again a chunk at
    a time (`chunks`), never held whole."""

    table: UserTable
    styles: pl.DataFrame
    passthrough: tuple[str, ...]
    files: dict[str, InputFile]  # every input file, by resolved URI (`uri_column`), checked once
    rows: int  # manifest rows to plan (all, or those `only` keeps)
    used_styles: frozenset[str | None]  # the styles rows name (None: rows without one)
    headline_column: str
    warnings: tuple[str, ...] = ()  # what runs anyway but looks wrong (a column name close to a known one)
    selected: frozenset[str] | None = None  # `only`'s ids

    @property
    def uri(self) -> str:
        return self.table.uri

    def chunks(self, chunk_rows: int) -> Iterator[Inputs]:
        """The rows (those `only` keeps) typed and their input files resolved, `chunk_rows` manifest
        rows at a time, in manifest order."""
        for chunk, first in _numbered(self.table.chunks(chunk_rows)):
            df, _, problems = _typed(chunk, first, self.headline_column, self.uri)
            if problems:  # rows that passed validation do not fail now: the file was replaced meanwhile
                raise ManifestError([Problem(self.uri, "the manifest changed while the run read it (rows that "
                                                       "passed its checks fail them now); run again")])
            if self.selected is not None:
                df = df.filter(pl.col("id").is_in(list(self.selected)))
                if not len(df):
                    continue
            for column in FILE_COLUMNS:
                df, _ = with_uris(df, column, paths.parent(self.uri))
            raw = chunk.select(list(self.passthrough))  # metadata (pandas', bytes not UTF-8) is not the user's data
            raw = pa.Table.from_arrays(raw.columns, schema=pa.schema([f.remove_metadata() for f in raw.schema]))
            yield Inputs(df, self.styles, self.uri, self.passthrough, raw, self.files, first)

    def only(self, rows: tuple[str, ...]) -> Manifest:
        """This manifest limited to the ids `rows` (all when empty); an unknown id is an error,
        not an empty run."""
        if not rows:
            return self
        found = self.ids_among(set(rows))
        if unknown := sorted(set(rows) - found):
            raise ManifestError([Problem(self.uri, f"--rows: no such id(s): {', '.join(unknown)}")])
        return dataclasses.replace(self, rows=len(found), selected=frozenset(found))

    def ids_among(self, ids: set[str]) -> set[str]:
        """Which of `ids` (a few: --rows, a reviewer's decisions) the manifest has, read from its id column alone."""
        found: set[str] = set()
        if not ids:
            return found
        wanted = sorted(i for i in ids if i is not None)
        for chunk in self.table.chunks(READ_ROWS, ["id"]):
            column = pl.from_arrow(chunk.column("id")).cast(pl.String)
            found |= set(column.filter(column.is_in(wanted)).to_list())
        return found


def load_inputs(cfg: JobConfig) -> Manifest:
    """Read and validate the job's manifest and styles; raises ManifestError. Columns that are
    read by no one and look misspelt are in `Manifest.warnings`."""
    styles, files, warnings = load_styles(cfg)
    manifest = validate_manifest(open_parquet(cfg.job.manifest, "manifest"), styles, cfg)
    return dataclasses.replace(manifest, files={**files, **manifest.files}, warnings=(*warnings, *manifest.warnings))


def _with_headline(table: pa.Table, column: str) -> pa.Table:
    """The manifest with its headlines as `headline`, when [overlay].headline_column names another
    column (which stays a passthrough column too)."""
    if column == "headline" or column not in table.column_names:
        return table
    if "headline" in table.column_names:
        table = table.drop_columns(["headline"])
    return table.append_column("headline", table.column(column))


def _numbered(chunks: Iterator[pa.Table]) -> Iterator[tuple[pa.Table, int]]:
    """Each chunk with the number of its first row in the manifest."""
    first = 0
    for chunk in chunks:
        yield chunk, first
        first += chunk.num_rows


def _typed(chunk: pa.Table, first: int, headline_column: str, uri: str) -> tuple[pl.DataFrame | None, list, int]:
    """A chunk's rows typed (every optional column there, null where absent), or its problems."""
    df, found, total = typed_rows(_with_headline(chunk, headline_column), schema.MANIFEST_COLUMNS, uri, "id", first)
    return (with_missing(df, schema.MANIFEST_OPTIONAL) if df is not None else None), found, total


def validate_manifest(table: UserTable, styles: pl.DataFrame, cfg: JobConfig) -> Manifest:
    """Type and check every row, a chunk at a time; raise ManifestError listing all problems
    (capped): first the columns (whatever the rows), then values the types cannot hold, then
    the rows' own problems (with duplicate ids and unreadable input files)."""
    uri, column = table.uri, cfg.overlay.headline_column
    passthrough = tuple(c for c in table.schema.names if c not in schema.CONSUMED_MANIFEST_COLUMNS)
    reserved = [Problem(uri, "name is reserved by the results table; rename the column", column=name)
                for name in passthrough if name in schema.RESERVED_NAMES or name.startswith("__")]
    shape = _with_headline(table.schema.empty_table(), column)
    if problems := column_problems(shape.schema, schema.MANIFEST_COLUMNS, uri, schema.MANIFEST_REQUIRED, reserved):
        raise ManifestError(problems)
    if table.rows == 0:
        raise ManifestError([Problem(uri, "the manifest has no rows")])
    checks = _manifest_checks(cfg, styles["style"].drop_nulls().to_list())
    typing, found = Problems(), Problems()
    files: dict[str, InputFile] = {}
    used: set[str | None] = set()
    negatives: set[str | None] = set()
    with DuplicateIds(uri, table.rows) as duplicates:
        for chunk, first in _numbered(table.chunks(READ_ROWS)):
            df, first_problems, n = _typed(chunk, first, column, uri)
            if n:
                typing.add(first_problems, n)
                continue
            duplicates.add(df)
            found.add(*collect(df, checks, uri))
            found.add(*row_problems(with_styles(df, styles, ("headline_font",)), _headline_check(cfg), uri))
            found.add(*row_problems(with_styles(df, styles, ("num_candidates", "keep")), _keep_check(cfg), uri))
            for name in FILE_COLUMNS:
                df, first_problems, n = check_inputs(df, name, paths.parent(uri), cfg, inspect_image, uri, "id", files)
                found.add(first_problems, n)
            used |= set(df["style"].unique().to_list())
            negatives |= negative_styles(df)
        typing.raise_any()
        found.add(*duplicates.problems())
    found.raise_any()
    warnings = [*unread_columns(shape, schema.MANIFEST_COLUMNS, uri, all_of_them=False),
                *family_warnings(negatives, styles, cfg)]
    return Manifest(table, styles, passthrough, files, table.rows, frozenset(used), column, tuple(warnings))


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
