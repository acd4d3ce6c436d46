"""Read and validate manifests and styles tables; every problem names file, row, id, column and value.

Checks are vectorised (polars), so a million-row manifest validates in seconds, and all
problems are reported at once (capped), not one per run.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline import schema, uris
from pipeline.config import LIMITS, JobConfig, Limit, show, suggest

MAX_REPORTED = 50
MAX_ID_CHARS = 200
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")
_BAD_ID = re.compile(r"[/\\\x00-\x1f]|^\.{1,2}$|\.\.")


class ManifestError(ValueError):
    """The input cannot run. Holds every problem found, not only the first."""

    def __init__(self, problems: list[Problem], total: int | None = None):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [str(p) for p in problems[:MAX_REPORTED]]
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more problem(s)")
        super().__init__("\n".join(lines))


@dataclass(frozen=True)
class Problem:
    file: str
    message: str
    row: int | None = None  # 0-based row number
    id: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (id {show(self.id)})" if self.id is not None else ""))
        if self.column:
            where.append(f"column {self.column!r}")
        return ": ".join([", ".join(where), self.message])


@dataclass(frozen=True)
class Inputs:
    """A validated manifest and styles table, ready to plan."""

    manifest: pl.DataFrame  # typed columns + `__row`
    styles: pl.DataFrame
    manifest_uri: str
    passthrough: tuple[str, ...]
    raw: pa.Table  # the manifest as read: passthrough columns keep their exact Arrow types
    files: dict[str, InputFile]  # every input file, by resolved URI (`uri_column`), checked once


@dataclass(frozen=True)
class InputFile:
    """An input file as checked once: what its content is, and whether it has transparency."""

    fingerprint: str
    has_alpha: bool = False


def uri_column(column: str) -> str:
    """The column holding `column`'s values resolved (`pipeline.uris.resolve`)."""
    return f"__uri_{column}"


def read_parquet(uri: str, what: str) -> pa.Table:
    """Read a whole Parquet table (a file, or a folder of parts) from a path or any fsspec URI,
    with a clear error."""
    import pyarrow.parquet as pq

    from pipeline import tables

    try:
        if uris.split(uri)[0] == uris.LOCAL:
            table = pq.read_table(uri)  # by path: Arrow's own files (see pipeline/tables.py)
        else:
            # Through fsspec, like every other input: one client, one configuration (pyarrow's
            # own S3 client does not read every standard AWS variable).
            fs, path = uris.filesystem(uri)
            parts = sorted(p for p in fs.find(path) if p.endswith(".parquet")) if fs.isdir(path) else [path]
            if not parts:
                raise FileNotFoundError(path)
            read = [tables.read(fs.open(p, "rb")) for p in parts]
            table = pa.concat_tables(read, promote_options="default") if len(read) > 1 else read[0]
    except FileNotFoundError:
        raise ManifestError([Problem(uri, f"{what} not found")]) from None
    except (pa.ArrowInvalid, OSError) as e:
        raise ManifestError([Problem(uri, f"{what} is not a readable Parquet file ({e})")]) from None
    # pandas writes its index as a column; it is not the user's data.
    index_columns = [c for c in table.column_names if _PANDAS_INDEX.fullmatch(c)]
    return table.drop_columns(index_columns) if index_columns else table


def _pl_type(arrow_type: pa.DataType) -> pl.DataType:
    return pl.from_arrow(pa.array([], type=arrow_type)).dtype


def _with_missing(df: pl.DataFrame, spec: dict[str, pa.DataType]) -> pl.DataFrame:
    """Absent optional columns as typed nulls, so every check and the plan can name them."""
    missing = [pl.lit(None, dtype=_pl_type(t)).alias(n) for n, t in spec.items() if n not in df.columns]
    return df.with_columns(missing) if missing else df


@dataclass(frozen=True)
class Check:
    """One vectorised rule: the rows where `bad` holds break it. `message` says how: a rule
    ('steps must be 1..1000') to which ', got <value>' is added, or a callable over the value
    for wording of its own. `value` is what the message quotes (default: the column)."""

    bad: pl.Expr
    column: str
    message: str | Callable[[Any], str]
    value: pl.Expr | None = None

    def explain(self, value: Any) -> str:
        if callable(self.message):
            return self.message(value)
        return self.message if value is None else f"{self.message}, got {show(value)}"


def _collect(df: pl.DataFrame, checks: list[Check], uri: str, id_col: str = "id") -> tuple[list[Problem], int]:
    """Every check over the frame: (first problems, total count)."""
    found: list[Problem] = []
    total = 0
    for check in checks:
        first, n = _row_problems(df, check, uri, id_col)
        found += first
        total += n
    return found, total


def _is_integral_float(s: pl.Series) -> bool:
    vals = s.drop_nulls()
    return bool((vals == vals.round(0)).all()) if len(vals) else True


def _typed(df: pl.DataFrame, spec: dict[str, pa.DataType], uri: str, required: dict) -> tuple[
        pl.DataFrame, list[Problem]]:
    """Check required columns and cast known columns to their schema types."""
    problems = [Problem(uri, "required column is missing", column=c) for c in required if c not in df.columns]
    casts = []
    for name, arrow_type in spec.items():
        if name not in df.columns:
            continue
        s = df[name]
        want = _pl_type(arrow_type)
        ok = True
        if want == pl.String:
            ok = s.dtype in (pl.String, pl.Null, pl.Categorical) or isinstance(s.dtype, pl.Enum)
        elif want == pl.Int64:
            ok = s.dtype.is_integer() or s.dtype == pl.Null or (s.dtype.is_float() and _is_integral_float(s))
        elif want == pl.Float64:
            ok = s.dtype.is_numeric() or s.dtype == pl.Null
        elif isinstance(want, pl.List):
            ok = s.dtype == pl.Null or (isinstance(s.dtype, pl.List) and (
                s.dtype.inner.is_integer() or s.dtype.inner == pl.Null))
        if not ok:
            problems.append(Problem(uri, f"wrong type {s.dtype}, expected {want}", column=name))
        else:
            casts.append(pl.col(name).cast(want, strict=False))
    if casts:
        before = {name: df[name].null_count() for name in df.columns}
        df = df.with_columns(casts)
        for name in before:
            if df[name].null_count() > before[name]:
                problems.append(Problem(uri, "values out of range for the column's type", column=name))
    return df, problems


def _row_problems(df: pl.DataFrame, check: Check, uri: str, id_col: str = "id") -> tuple[list[Problem], int]:
    """Problems for the rows that break `check`; returns (first few, total count). Only the
    reported rows' values are read, so a million bad rows cost one filter."""
    hit = df.filter(check.bad)
    first = hit.head(MAX_REPORTED).select(
        "__row",
        (pl.col(id_col) if id_col in hit.columns else pl.lit(None)).alias("__id"),
        (pl.col(check.column) if check.value is None else check.value).alias("__value"))
    return [Problem(uri, check.explain(v), row=int(r), id=i, column=check.column)
            for r, i, v in first.iter_rows()], len(hit)


def _breaks(value: pl.Expr, limit: Limit) -> pl.Expr:
    """Where `value` is outside `limit` (the job spec's table: one rule for both)."""
    bad = (value <= limit.lo) if limit.lo_open else (value < limit.lo)
    if limit.hi is not None:
        bad = bad | (value > limit.hi)
    return bad | (value % limit.multiple != 0) if limit.multiple > 1 else bad


def _limit_checks(*pairs: tuple[str, str]) -> list[Check]:
    """(column, LIMITS key) → a check each; a null falls back to the style or the job."""
    return [Check(pl.col(column).is_not_null() & _breaks(pl.col(column), LIMITS[limit]), column,
                  f"{column} must be {LIMITS[limit]}") for column, limit in pairs]


def _style_checks() -> list[Check]:
    c = pl.col
    return [
        Check(c("style").is_null() | (c("style").str.strip_chars() == ""), "style", "empty style name"),
        Check(~c("style").is_first_distinct() & c("style").is_not_null(), "style",
              lambda v: f"duplicate style name {show(v)}"),
        Check(c("prompt_template").is_not_null() & ~c("prompt_template").str.contains("{prompt}", literal=True),
              "prompt_template", "template must contain {prompt}"),
        *_limit_checks(("steps", "steps"), ("guidance_scale", "guidance_scale"), ("strength", "strength"),
                       ("width", "size"), ("height", "size"), ("num_candidates", "num_candidates"),
                       ("keep", "keep"), ("lora_scale", "lora_scale"), ("clip_threshold", "clip_threshold")),
        Check(c("seeds").is_not_null() & c("seeds").list.eval(
            _breaks(pl.element(), LIMITS["seed"]) | pl.element().is_null()).list.any(), "seeds",
            f"seeds must be {LIMITS['seed']}"),
        Check(c("model").is_not_null(), "model",
              lambda v: f"model {show(v)}: per-style models are not supported yet; run one job per model"),
        Check(c("lora").is_not_null() & ~c("lora").str.ends_with(".safetensors"), "lora",
              "a LoRA must be a .safetensors file (pickle weights are never loaded)"),
    ]


def validate_styles(table: pa.Table | None, uri: str) -> pl.DataFrame:
    """The styles table, typed and checked; an empty table when the job has none."""
    if table is None:
        table = pa.schema(list(schema.STYLES_COLUMNS.items())).empty_table()
    df, problems = _typed(pl.from_arrow(table), schema.STYLES_COLUMNS, uri, schema.STYLES_REQUIRED)
    if problems:
        raise ManifestError(problems)
    df = _with_missing(df.with_row_index("__row"), schema.STYLES_COLUMNS)
    found, total = _collect(df, _style_checks(), uri, id_col="style")
    if total:
        raise ManifestError(found, total)
    return df


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
        *_limit_checks(("seed", "seed"), ("num_candidates", "num_candidates"), ("keep", "keep"),
                       ("width", "size"), ("height", "size"), ("strength", "strength")),
        Check(c("mask").is_not_null() & c("product_image").is_null(), "mask", "a mask needs a product_image"),
    ]


def _inspect_image(uri: str) -> InputFile:
    """Read an input image once: its content fingerprint, and a decode check."""
    import io

    from PIL import Image

    if uris.split(uri)[0] == uris.LOCAL:
        data = uris.read_bytes(uri)
        fingerprint, source = uris.content_digest(data), io.BytesIO(data)
    else:  # the store's own fingerprint; the header is read to check it is an image
        fingerprint, source = uris.fingerprint(uri), uris.filesystem(uri)[0].open(uris.filesystem(uri)[1], "rb")
    with source, Image.open(source) as im:
        alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        im.verify()
    return InputFile(fingerprint, alpha)


def _inspect_file(uri: str) -> InputFile:
    return InputFile(uris.fingerprint(uri))


def _check_inputs(df: pl.DataFrame, column: str, base: str, cfg: JobConfig, inspect, file: str,
                  id_col: str, files: dict[str, InputFile]) -> tuple[pl.DataFrame, list[Problem], int]:
    """Resolve `column`'s values into `uri_column(column)`, then check each distinct file once
    (allowed scheme and roots, present, readable) and record it in `files`. Returns the frame,
    the first problems (one per row using a bad file) and their count."""
    from PIL import UnidentifiedImageError

    why: dict[str, str] = {}
    resolved: dict[str, str] = {}
    for value in df[column].drop_nulls().unique().to_list():
        try:
            resolved[value] = uris.resolve(value, base)
        except ValueError as e:
            why[value] = str(e)
    refused: dict[str, str] = {}  # resolved URI → why (two values may name one file)
    for uri in set(resolved.values()) - set(files):
        if (outside := uris.problem(uri, cfg.job.allowed_input_roots, cfg.job.allowed_input_schemes)):
            refused[uri] = outside
            continue
        try:
            files[uri] = inspect(uri)
        except FileNotFoundError:
            refused[uri] = f"file not found: {uri}"
        except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
            kind = "image" if inspect is _inspect_image else "file"
            refused[uri] = f"not a readable {kind}: {uri} ({type(e).__name__})"
        except Exception as e:  # noqa: BLE001 — credentials, network, a missing fsspec backend: name it
            refused[uri] = f"cannot read {uri}: {type(e).__name__}: {e}"
    why.update((value, refused[uri]) for value, uri in resolved.items() if uri in refused)
    df = df.with_columns(pl.col(column).replace_strict(resolved, default=None, return_dtype=pl.String)
                         .alias(uri_column(column)))
    bad = df.filter(pl.col(column).is_in(list(why))).select("__row", id_col, column)
    found = [Problem(file, why[v], row=int(r), id=i, column=column)
             for r, i, v in bad.head(MAX_REPORTED).iter_rows()]
    return df, found, len(bad)


def validate_manifest(table: pa.Table, styles: pl.DataFrame, cfg: JobConfig, uri: str) -> Inputs:
    """Type and check every row; raise ManifestError listing all problems (capped)."""
    df, problems = _typed(pl.from_arrow(table), schema.MANIFEST_COLUMNS, uri, schema.MANIFEST_REQUIRED)
    passthrough = tuple(c for c in df.columns if c not in schema.CONSUMED_MANIFEST_COLUMNS)
    for name in passthrough:
        if name in schema.RESERVED_NAMES or name.startswith("__"):
            problems.append(Problem(uri, "name is reserved by the results table; rename the column",
                                    column=name))
    if problems:
        raise ManifestError(problems)
    if len(df) == 0:
        raise ManifestError([Problem(uri, "the manifest has no rows")])
    df = _with_missing(df.with_row_index("__row"), schema.MANIFEST_OPTIONAL)
    c = pl.col
    found, total = _collect(df, _manifest_checks(cfg, styles["style"].drop_nulls().to_list()), uri)
    # keep <= num_candidates after the row → style → job fallbacks.
    joined = df.join(styles.select("style", c("num_candidates").alias("s_n"), c("keep").alias("s_k")),
                     on="style", how="left")
    joined = joined.with_columns(
        c("num_candidates").fill_null(c("s_n")).fill_null(cfg.job.num_candidates).alias("__n"),
        c("keep").fill_null(c("s_k")).fill_null(cfg.job.keep).alias("__k"))
    first, n = _row_problems(joined, Check(c("__k") > c("__n"), "keep", lambda v: "keep exceeds num_candidates: "
                                           f"{v['__k']} > {v['__n']}", pl.struct("__k", "__n")), uri)
    found += first
    total += n
    files: dict[str, InputFile] = {}
    for column in ("product_image", "mask"):  # relative to the manifest's own folder or prefix
        df, first, n = _check_inputs(df, column, uris.parent(uri), cfg, _inspect_image, uri, "id", files)
        found += first[:max(0, MAX_REPORTED - len(found))]
        total += n
    if total:
        found.sort(key=lambda p: (p.row if p.row is not None else -1))
        raise ManifestError(found, total)
    return Inputs(df, styles, uri, passthrough, table.select(list(passthrough)), files)


def load_inputs(cfg: JobConfig) -> Inputs:
    """Read and validate the job's manifest and styles; raises ManifestError."""
    styles_table = read_parquet(cfg.job.styles, "styles table") if cfg.job.styles else None
    styles = validate_styles(styles_table, cfg.job.styles)
    files: dict[str, InputFile] = {}
    problems, total = [], 0
    for column, inspect in (("reference_image", _inspect_image), ("lora", _inspect_file)):
        styles, first, n = _check_inputs(styles, column, styles_base_dir(cfg), cfg, inspect, cfg.job.styles,
                                         "style", files)
        problems += first
        total += n
    if total:
        raise ManifestError(problems, total)
    table = read_parquet(cfg.job.manifest, "manifest")
    inputs = validate_manifest(table, styles, cfg, cfg.job.manifest)
    return dataclasses.replace(inputs, files={**files, **inputs.files})


def styles_base_dir(cfg: JobConfig) -> str:
    """Relative style URIs (reference images, LoRAs) resolve against the styles file's folder."""
    return uris.parent(cfg.job.styles) if cfg.job.styles else str(Path.cwd())
