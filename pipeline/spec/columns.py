"""The columns of a user's table the pipeline reads, checked in Arrow before polars sees them:
names usable once, text that is UTF-8, types that can hold the schema's values (no fraction
where a whole number goes, nothing past 64 bits), then cast to the schema's types.

Every problem is named at once by column, and by row and value where a row holds it; columns
the pipeline does not read never reach polars (passthrough columns stay Arrow, as read), and
one whose name is close to a column it reads is warned about.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipeline.errors import MAX_REPORTED, ManifestError, Problem, show
from pipeline.spec.checks import Check, collect
from pipeline.spec.suggest import nearest, suggest


def typed(table: pa.Table, spec: dict[str, pa.DataType], uri: str, required: dict, id_col: str,
          also: list[Problem] | None = None) -> pl.DataFrame:
    """The columns of `spec` that `table` has, checked in Arrow (names, UTF-8, types) before
    polars sees them and cast to their schema types, with `__row`; ManifestError naming every
    problem. Other columns never reach polars: passthrough columns stay Arrow, as read."""
    problems = column_problems(table.schema, spec, uri, required, also)
    if problems:
        raise ManifestError(problems)
    df, found, total = typed_rows(table, spec, uri, id_col)
    if total:
        raise ManifestError(found, total)
    return df


def column_problems(schema: pa.Schema, spec: dict[str, pa.DataType], uri: str, required: dict,
                    also: list[Problem] | None = None) -> list[Problem]:
    """What is wrong with a table's columns whatever its rows (`also`, then required columns
    missing, types that cannot hold the schema's values); ManifestError at once for names that
    cannot be addressed (empty, or used twice), as nothing more can be checked."""
    problems = _names(schema.names, uri)
    if problems:
        raise ManifestError(problems)
    problems = list(also or ())
    problems += [Problem(uri, "required column is missing", column=c) for c in required if c not in schema.names]
    empty = schema.empty_table()
    problems += [Problem(uri, f"wrong type {schema.field(name).type}, expected {arrow_type}", column=name)
                 for name, arrow_type in spec.items()
                 if name in schema.names and _as_expected(empty.column(name), arrow_type) is None]
    return problems


def typed_rows(table: pa.Table, spec: dict[str, pa.DataType], uri: str, id_col: str,
               offset: int = 0) -> tuple[pl.DataFrame | None, list[Problem], int]:
    """These rows (the `offset`th of their table first) typed, once `column_problems` found none:
    (frame, [], 0), or (None, the first problems, their count) for values the schema's types
    cannot hold (text that is not UTF-8, a fraction where a whole number goes)."""
    problems = _invalid_text(table, uri, id_col, offset)
    if problems:
        return None, problems, len(problems)
    kept = {name: _as_expected(table.column(name), t) for name, t in spec.items() if name in table.column_names}
    # Arrays only: the table's metadata (pandas', or bytes that are not UTF-8) never reaches polars.
    df = pl.from_arrow(pa.Table.from_arrays(list(kept.values()), names=list(kept))).with_row_index("__row", offset)
    found, total = collect(df, _cast_checks(df, spec), uri, id_col)
    if total:
        return None, found, total
    return df.with_columns(pl.col(n).cast(_pl_type(t), strict=False) for n, t in spec.items() if n in df.columns), [], 0


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


def _pl_type(arrow_type: pa.DataType) -> pl.DataType:
    return pl.from_arrow(pa.array([], type=arrow_type)).dtype


def with_missing(df: pl.DataFrame, spec: dict[str, pa.DataType]) -> pl.DataFrame:
    """Absent optional columns as typed nulls, so every check and the plan can name them."""
    missing = [pl.lit(None, dtype=_pl_type(t)).alias(n) for n, t in spec.items() if n not in df.columns]
    return df.with_columns(missing) if missing else df


def _names(names: list[str], uri: str) -> list[Problem]:
    """Column names every later step can address: each non-empty and used once."""
    problems = [Problem(uri, "a column has an empty name; name it")] if "" in names else []
    problems += [Problem(uri, f"duplicate column {n!r} (a name may be used once)")
                 for n in dict.fromkeys(names) if names.count(n) > 1 and n]
    return problems


_TEXT = (pa.types.is_string, pa.types.is_large_string, pa.types.is_string_view)


def _invalid_text(table: pa.Table, uri: str, id_col: str, offset: int = 0) -> list[Problem]:
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
                problems.append(Problem(uri, f"text that is not valid UTF-8, got {show(value)}", row=offset + row,
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
    if pa.types.is_list(want):  # a list of whole numbers (seeds) or of text (formats), whatever its item's name
        items = _TEXT if want.value_type == pa.string() else (pa.types.is_integer,)
        ok = (pa.types.is_list(t) or pa.types.is_large_list(t)) and (
            any(f(t.value_type) for f in items) or pa.types.is_null(t.value_type))
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
