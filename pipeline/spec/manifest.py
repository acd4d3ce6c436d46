"""Read and validate manifests and styles tables; every problem names file, row, id, column and value.

Checks are vectorised (polars), so a million-row manifest validates in seconds, and all
problems are reported at once (capped), not one per run.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pipeline.errors import MAX_REPORTED, ManifestError, Problem, refusal, show
from pipeline.spec import schema
from pipeline.spec.config import LIMITS, JobConfig, Limit, nearest, suggest
from pipeline.storage import uris

MAX_ID_CHARS = 200
_PANDAS_INDEX = re.compile(r"__index_level_\d+__")
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


@dataclass(frozen=True)
class InputFile:
    """An input file as checked once: what its content is, and whether it has transparency."""

    fingerprint: str
    has_alpha: bool = False


def uri_column(column: str) -> str:
    """The column holding `column`'s values resolved (`pipeline.storage.uris.resolve`)."""
    return f"__uri_{column}"


def _parts(where: str) -> list[str]:
    """The Parquet files a table URI names: itself, or the `.parquet` files under a folder or
    prefix; each a regular file or object, all together within the table limit."""
    scheme, path = uris.split(where)
    if scheme == uris.LOCAL:
        if os.path.isdir(path):
            parts = sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names
                           if n.endswith(".parquet"))
        else:
            parts = [path]
    else:
        fs, key = uris.filesystem(where)
        found = sorted(p for p in fs.find(key) if p.endswith(".parquet")) if fs.isdir(key) else [key]
        parts = [f"{scheme}://{p}" for p in found]
    if not parts:
        raise FileNotFoundError(where)
    uris.within_limit(where, sum(uris.checked_size(p, uris.TABLE) for p in parts), uris.TABLE)  # all together
    return parts


def read_parquet(uri: str, what: str) -> pa.Table:
    """A whole Parquet table (a file, or a folder or prefix of parts) from a path or any fsspec
    URI, or ManifestError saying why not. The URI resolves and its parts are checked as every
    input is (`pipeline.storage.uris`), so an address that names no place, a device, a pipe or a store
    out of reach is a named problem."""
    from pipeline.storage import tables

    try:
        where = uris.resolve(uri, os.getcwd())
    except ValueError as e:
        raise ManifestError([Problem(uri, f"{what} cannot be read: {e}")]) from None
    try:
        read = []
        for part in _parts(where):
            if uris.split(part)[0] == uris.LOCAL:
                read.append(tables.read(part))  # by path: Arrow's own file (see pipeline/storage/tables.py)
            else:
                # Through fsspec, like every other input: one client, one configuration (pyarrow's
                # own S3 client does not read every standard AWS variable).
                with uris.open_input(part, uris.TABLE) as f:
                    read.append(tables.read(f))
        table = pa.concat_tables(read, promote_options="default") if len(read) > 1 else read[0]
    except Exception as e:  # noqa: BLE001 — whatever stops the read (credentials, network, a driver) is named
        raise ManifestError([Problem(uri, refusal(e, uri, what, "Parquet file"))]) from None
    # pandas writes its index as a column; it is not the user's data.
    names = table.column_names
    return table.select([i for i, c in enumerate(names) if not _PANDAS_INDEX.fullmatch(c)])


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


def _names(table: pa.Table, uri: str) -> list[Problem]:
    """Column names every later step can address: each non-empty and used once."""
    names = table.column_names
    problems = [Problem(uri, "a column has an empty name; name it")] if "" in names else []
    problems += [Problem(uri, f"duplicate column {n!r} (a name may be used once)")
                 for n in dict.fromkeys(names) if names.count(n) > 1 and n]
    return problems


_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def _invalid_text(table: pa.Table, uri: str, id_col: str) -> list[Problem]:
    """Columns whose data Arrow does not find valid (text that is not UTF-8, above all), by row
    and value where the column is text: polars would panic on them, and results would carry them."""
    problems: list[Problem] = []
    ids = table.column(id_col) if id_col in table.column_names and _text_ok(table.column(id_col)) else None
    for name in table.column_names:
        column = table.column(name)
        if _text_ok(column):
            continue
        if not any(t(column.type) for t in _TEXT):
            problems.append(Problem(uri, f"holds data Arrow finds invalid ({column.type})", column=name))
            continue
        binary = column.cast(pa.large_binary())  # a cast of the bytes, never decoded
        for row, value in enumerate(binary.to_pylist()):  # only a column that failed is walked
            if value is not None and not _utf8(value):
                problems.append(Problem(uri, f"text that is not valid UTF-8, got {show(value)}", row=row,
                                        id=ids[row].as_py() if ids is not None else None, column=name))
                if len(problems) >= MAX_REPORTED:
                    return problems
    return problems


def _text_ok(column: pa.ChunkedArray) -> bool:
    try:
        column.validate(full=True)
    except pa.ArrowInvalid:
        return False
    return True


def _utf8(value: bytes) -> bool:
    try:
        value.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _as_expected(column: pa.ChunkedArray, want: pa.DataType) -> pa.ChunkedArray | None:
    """`column` in a type polars takes for a column read as `want`, or None when its type cannot
    hold such values. Decided on the Arrow type, so polars sees only types it handles (text
    undictionaried, decimals as floats): never a decimal256 or an odd dictionary."""
    t = column.type
    if pa.types.is_null(t):
        return column
    if want == pa.string():
        if pa.types.is_dictionary(t) and any(f(t.value_type) for f in _TEXT) or any(f(t) for f in _TEXT):
            return column.cast(pa.large_string())
        return None
    if want == pa.int64():
        ok = pa.types.is_integer(t) or t in (pa.float32(), pa.float64())
        return column if ok else None
    if want == pa.float64():
        if pa.types.is_decimal(t):
            return column.cast(pa.float64())
        return column if pa.types.is_integer(t) or pa.types.is_floating(t) and t != pa.float16() else None
    if pa.types.is_list(want):
        ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            pa.types.is_integer(t.value_type) or pa.types.is_null(t.value_type))
        return column if ok else None
    raise AssertionError(f"no rule for {want}")


def _cast_checks(df: pl.DataFrame, spec: dict[str, pa.DataType]) -> list[Check]:
    """The rows whose values the schema's type cannot hold: a fraction, NaN or infinity where a
    whole number goes, a number beyond 64 bits."""
    c, checks = pl.col, []
    for name, arrow_type in spec.items():
        want = _pl_type(arrow_type)
        if name not in df.columns or df[name].dtype in (want, pl.Null):
            continue
        kept = c(name).cast(want, strict=False)
        if df[name].dtype.is_float() and want == pl.Int64:
            checks.append(Check(c(name).is_nan() | c(name).is_infinite() | (c(name) != c(name).round(0)), name,
                                "wrong type: not a whole number"))
            checks.append(Check(c(name).is_finite() & kept.is_null(), name, "out of range for a 64-bit integer"))
        elif isinstance(want, pl.List):
            nulls = lambda e: e.list.eval(pl.element().is_null().sum()).list.first()  # noqa: E731
            checks.append(Check(c(name).is_not_null() & (nulls(kept) > nulls(c(name))), name,
                                "out of range for 64-bit integers"))
        else:
            checks.append(Check(c(name).is_not_null() & kept.is_null(), name, "out of range for a 64-bit integer"))
    return checks


def _typed(table: pa.Table, spec: dict[str, pa.DataType], uri: str, required: dict, id_col: str,
           also: list[Problem] | None = None) -> pl.DataFrame:
    """The columns of `spec` that `table` has, checked in Arrow (names, UTF-8, types) before
    polars sees them and cast to their schema types, with `__row`; ManifestError naming every
    problem. Other columns never reach polars: passthrough columns stay Arrow, as read."""
    problems = _names(table, uri)
    if problems:  # a name used twice cannot be addressed, so nothing more can be checked
        raise ManifestError(problems)
    problems = list(also or ())
    problems += [Problem(uri, "required column is missing", column=c) for c in required if c not in table.column_names]
    problems += _invalid_text(table, uri, id_col)
    kept: dict[str, pa.ChunkedArray] = {}
    for name, arrow_type in spec.items():
        if name in table.column_names:
            column = _as_expected(table.column(name), arrow_type)
            if column is None:
                problems.append(Problem(uri, f"wrong type {table.column(name).type}, expected {arrow_type}",
                                        column=name))
            else:
                kept[name] = column
    if problems:
        raise ManifestError(problems)
    # Arrays only: the table's metadata (pandas', or bytes that are not UTF-8) never reaches polars.
    df = pl.from_arrow(pa.Table.from_arrays(list(kept.values()), names=list(kept))).with_row_index("__row")
    found, total = _collect(df, _cast_checks(df, spec), uri, id_col)
    if total:
        raise ManifestError(found, total)
    return df.with_columns(pl.col(n).cast(_pl_type(t), strict=False) for n, t in spec.items() if n in df.columns)


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
    df = _with_missing(_typed(table, schema.STYLES_COLUMNS, uri, schema.STYLES_REQUIRED, "style"),
                       schema.STYLES_COLUMNS)
    found, total = _collect(df, _style_checks(), uri, id_col="style")
    if total:
        raise ManifestError(found, total)
    return df


def unread_columns(table: pa.Table | None, known: dict[str, pa.DataType], uri: str, all_of_them: bool) -> list[str]:
    """Warnings for columns the pipeline does not read: each (`all_of_them`, a styles table) or
    those whose name is close to one it reads (a manifest, whose other columns pass through)."""
    found = []
    for name in table.column_names if table is not None else ():
        if name in known:
            continue
        near = nearest(name, list(known))
        if near is not None:
            found.append(f"{uri}: column {name!r} is not read (did you mean {near!r}?)")
        elif all_of_them:
            found.append(f"{uri}: column {name!r} is not read ({suggest(name, list(known))})")
    return found


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
    """Read an input image once (bounded, as every input: `pipeline.storage.uris`): its content
    fingerprint, and a decode check."""
    import io

    from PIL import Image

    if uris.split(uri)[0] == uris.LOCAL:
        data = uris.read_bytes(uri, uris.IMAGE)
        fingerprint, source = uris.content_digest(data), io.BytesIO(data)
    else:  # the store's own fingerprint (its listing: one object, within the limit); the header
        # is read to check it is an image, with no second listing
        fs, key = uris.filesystem(uri)
        fingerprint, source = uris.fingerprint(uri, uris.IMAGE), fs.open(key, "rb")
    with source, Image.open(source) as im:
        alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        im.verify()
    return InputFile(fingerprint, alpha)


def _inspect_file(uri: str) -> InputFile:
    return InputFile(uris.fingerprint(uri, uris.WEIGHTS))


def _check_inputs(df: pl.DataFrame, column: str, base: str, cfg: JobConfig, inspect, file: str,
                  id_col: str, files: dict[str, InputFile]) -> tuple[pl.DataFrame, list[Problem], int]:
    """Resolve `column`'s values into `uri_column(column)`, then check each distinct file once
    (allowed scheme and roots, present, readable) and record it in `files`. Returns the frame,
    the first problems (one per row using a bad file) and their count."""
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
        except Exception as e:  # noqa: BLE001 — credentials, network, a missing fsspec backend: name it
            refused[uri] = refusal(e, uri, "file", "image" if inspect is _inspect_image else "file")
    why.update((value, refused[uri]) for value, uri in resolved.items() if uri in refused)
    df = df.with_columns(pl.col(column).replace_strict(resolved, default=None, return_dtype=pl.String)
                         .alias(uri_column(column)))
    bad = df.filter(pl.col(column).is_in(list(why))).select("__row", id_col, column)
    found = [Problem(file, why[v], row=int(r), id=i, column=column)
             for r, i, v in bad.head(MAX_REPORTED).iter_rows()]
    return df, found, len(bad)


def validate_manifest(table: pa.Table, styles: pl.DataFrame, cfg: JobConfig, uri: str) -> Inputs:
    """Type and check every row; raise ManifestError listing all problems (capped)."""
    passthrough = tuple(c for c in table.column_names if c not in schema.CONSUMED_MANIFEST_COLUMNS)
    reserved = [Problem(uri, "name is reserved by the results table; rename the column", column=name)
                for name in passthrough if name in schema.RESERVED_NAMES or name.startswith("__")]
    df = _typed(table, schema.MANIFEST_COLUMNS, uri, schema.MANIFEST_REQUIRED, "id", reserved)
    if len(df) == 0:
        raise ManifestError([Problem(uri, "the manifest has no rows")])
    df = _with_missing(df, schema.MANIFEST_OPTIONAL)
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
    # The passthrough columns as read, their types exact; metadata (pandas', or bytes that are
    # not UTF-8) is not the user's data and is not carried into the results.
    raw = table.select(list(passthrough))
    raw = pa.Table.from_arrays(raw.columns, schema=pa.schema([f.remove_metadata() for f in raw.schema]))
    warnings = unread_columns(table, schema.MANIFEST_COLUMNS, uri, all_of_them=False)
    return Inputs(df, styles, uri, passthrough, raw, files, tuple(warnings))


def load_inputs(cfg: JobConfig) -> Inputs:
    """Read and validate the job's manifest and styles; raises ManifestError. Columns that are
    read by no one and look misspelt are in `Inputs.warnings`."""
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
    warnings = unread_columns(styles_table, schema.STYLES_COLUMNS, cfg.job.styles, all_of_them=True)
    return dataclasses.replace(inputs, files={**files, **inputs.files}, warnings=(*warnings, *inputs.warnings))


def styles_base_dir(cfg: JobConfig) -> str:
    """Relative style URIs (reference images, LoRAs) resolve against the styles file's folder."""
    return uris.parent(cfg.job.styles) if cfg.job.styles else str(Path.cwd())
