"""Identity: the one canonical encoding of what names a candidate, and the hashes made of it.

Item ids, derived seeds and judge keys are hashes of typed values. What is hashed is never a
library's formatting of those values (`str()`, `json.dumps`, polars' `cast(pl.String)`): an
upgrade that wrote 7.5 as "7.50" would otherwise silently rename, and so regenerate, a whole
catalogue. Each value is written as one self-delimiting field, its type first:

    None         N
    bool         B1:0 | B1:1
    int          I<n>:<decimal digits, "-" first when negative>
    float        F<n>:<the IEEE-754 binary64 bits, as an unsigned decimal integer>
                 (-0.0 is written as 0.0, every NaN as the one quiet NaN 0x7ff8000000000000)
    str          S<n>:<UTF-8 bytes>

where <n> is the payload's length in bytes, in decimal. A key is its fields one after
another, UTF-8: no two different tuples of values share a key (7.5 is not "7.5", None is not
"", ("a", "bc") is not ("ab", "c")), and an int is the same field whatever its width.

`encode_field` is the definition. `encoded` computes the same fields for a whole polars column
(vectorised: a million-row plan must not call Python per value), and checks once per process
that it still agrees with `encode_field` on awkward values, so that a polars release that
formats numbers differently stops a plan instead of renaming every item.
Changing anything here changes every item id: bump `ITEM_RECIPE` (below) with it.
"""

from __future__ import annotations

import functools
import hashlib
import struct

import polars as pl
import pyarrow as pa

from pipeline.spec.limits import SEED_MAX

_NAN_BITS = 0x7FF8000000000000


def _float_bits(x: float) -> int:
    if x != x:  # every NaN is one value
        return _NAN_BITS
    return struct.unpack(">Q", struct.pack(">d", x + 0.0))[0]  # x + 0.0: -0.0 becomes 0.0


def _field(tag: str, payload: str) -> str:
    return f"{tag}{len(payload.encode('utf-8'))}:{payload}"


def encode_field(value: object) -> str:
    """One typed value as its canonical field (see the module's table)."""
    if value is None:
        return "N"
    if isinstance(value, bool):
        return _field("B", "1" if value else "0")
    if isinstance(value, int):
        return _field("I", str(int(value)))  # int(): a subclass's own __str__ never counts
    if isinstance(value, float):
        return _field("F", str(_float_bits(value)))
    if isinstance(value, str):
        return _field("S", value)
    raise TypeError(f"no canonical encoding for {type(value).__name__} {value!r}")


def encode(*values: object) -> bytes:
    """The canonical bytes of a tuple of values: their fields, one after another."""
    return "".join(map(encode_field, values)).encode("utf-8")


def digest(key: bytes, size: int) -> bytes:
    return hashlib.blake2b(key, digest_size=size).digest()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from typed parts, the same in every process, release and library version."""
    return int.from_bytes(digest(encode(*parts), 8), "big") & SEED_MAX


def _fields(tag: str, payload: pl.Expr) -> pl.Expr:
    """`_field` over a column of payloads (null → "N")."""
    return pl.concat_str(pl.lit(tag), payload.str.len_bytes().cast(pl.String), pl.lit(":"), payload).fill_null("N")


def _float_bits_column(x: pl.Series) -> pl.Series:
    """The bits `_float_bits` gives, of each float (nulls stay null): Arrow reinterprets the buffer."""
    x = x.cast(pl.Float64).rechunk()
    bits = pl.from_arrow(x.to_arrow().view(pa.uint64())).alias(x.name)
    return bits.to_frame().select(  # -0.0 is 0.0, and every NaN one NaN
        pl.when(x == 0).then(pl.lit(0, pl.UInt64)).when(x.is_nan()).then(pl.lit(_NAN_BITS, pl.UInt64))
        .otherwise(pl.col(x.name)).alias(x.name)).to_series()


def _prepared(frame: pl.DataFrame, name: str) -> tuple[pl.Series | None, pl.Expr]:
    """How polars writes `encode_field` of column `name`: a replacement column (float bits), if
    one is needed, and the expression over it."""
    dtype, c = frame.schema[name], pl.col(name)
    if dtype == pl.Null:
        return None, pl.repeat(pl.lit("N"), pl.len())
    if dtype.is_float():
        return _float_bits_column(frame[name]), _fields("F", c.cast(pl.String))
    if dtype == pl.Boolean:
        return None, _fields("B", c.cast(pl.UInt8).cast(pl.String))
    if dtype.is_integer():
        return None, _fields("I", c.cast(pl.String))
    if dtype == pl.String:
        return None, _fields("S", c)
    raise TypeError(f"no canonical encoding for column {name!r} of type {dtype}")


def _vectorised(frame: pl.DataFrame, fields: list[str | pl.Expr]) -> pl.Series:
    """The text of `encode(*row)` for each row of `frame` (a field: a column name, or a
    constant made by `literal`), computed by polars in one pass."""
    names = list(dict.fromkeys(f for f in fields if isinstance(f, str)))
    frame, exprs = frame.select(names), {}
    for name in names:
        replacement, exprs[name] = _prepared(frame, name)
        if replacement is not None:
            frame = frame.with_columns(replacement)
    return frame.select(pl.concat_str([exprs[f] if isinstance(f, str) else f for f in fields])
                        .alias("key")).to_series()


# Values whose fields polars must write exactly as `encode_field` does: a polars release that
# formats numbers differently stops the plan here, instead of renaming every item.
_PROBES: dict[pl.DataType, list] = {
    pl.Int64(): [0, 1, -1, 7, 10, -(2**63), 2**63 - 1, 1234567890123456789, None],
    pl.Int32(): [0, -7, 2**31 - 1, None],
    pl.UInt64(): [0, 2**64 - 1, None],
    pl.Float64(): [7.5, 0.0, -0.0, float("nan"), float("inf"), -float("inf"), 0.1, 1e-300, 5e-324, 1e300, -2.5, None],
    pl.Float32(): [7.5, -0.0, None],
    pl.Boolean(): [True, False, None],
    pl.String(): ["", "a", "7.5", "None", "é", "日本語", "a\x1fb", "\n", None],
}


@functools.cache
def _check_vectorised() -> None:
    for dtype, values in _PROBES.items():
        column = pl.Series("probe", values, dtype=dtype)
        expected = [encode_field(v) for v in column.to_list()]
        got = _vectorised(column.to_frame(), ["probe"]).to_list()
        if got != expected:
            raise RuntimeError(f"polars {pl.__version__} encodes {dtype} values unlike identity.encode_field "
                               f"({got} != {expected}): item ids would change; fix identity.py")


def encoded(column: pl.Series) -> pl.Series:
    """`encode_field` of every value of a column (a String column of fields, null → "N")."""
    return keys(column.to_frame(), column.name).alias(column.name)


def literal(value: object) -> pl.Expr:
    """A constant's field, as an expression to place among encoded columns."""
    return pl.lit(encode_field(value), dtype=pl.String)


def keys(df: pl.DataFrame, *fields: str | pl.Expr) -> pl.Series:
    """The canonical key of each row of `df` (text; its UTF-8 is `encode` of the row's values):
    a field is a column name of `df`, or a constant made by `literal`. Vectorised, and checked
    against `encode_field` once per process."""
    if not fields:
        raise ValueError("a key needs at least one field")
    _check_vectorised()
    return _vectorised(df, list(fields))


def digests(keys_: pl.Series, size: int) -> list[bytes]:
    """blake2b of each key (the text of `keys`, as UTF-8): the only per-value Python work."""
    b2 = hashlib.blake2b
    return [b2(k.encode("utf-8"), digest_size=size).digest() for k in keys_.to_list()]


def hex_ids(keys_: pl.Series, size: int = 16, distinct: bool = False) -> pl.Series:
    """The hash of each key in hex; `distinct`: hash each distinct key once (keys that repeat)."""
    if distinct:
        unique = keys_.unique()
        return keys_.replace_strict(unique, hex_ids(unique, size), return_dtype=pl.String)
    return pl.Series(keys_.name, [d.hex() for d in digests(keys_, size)], dtype=pl.String)


def seeds(keys_: pl.Series) -> pl.Series:
    """`derive_seed` of each key: 63 bits of its hash."""
    return pl.Series([int.from_bytes(d, "big") & SEED_MAX for d in digests(keys_, 8)], dtype=pl.Int64)


# Bump when what an item id hashes changes, so folders of older releases rerun cleanly.
# v3: the canonical typed encoding above (v2 hashed polars' string formatting).
ITEM_RECIPE = "item-v3"
# What shapes an image and its file. Inputs count by content (fingerprints), never by path:
# a replaced product photo regenerates, the same catalogue on another mount does not.
ITEM_KEY_COLUMNS = ("id", "candidate", "prompt", "negative_prompt", "style", "seed", "__model_fp",
                    "model_revision", "scheduler", "mode", "steps", "guidance_scale", "strength",
                    "width", "height", "__init_fp", "__mask_fp", "__lora_fp", "lora_scale", "format", "parent")
# Conditioning added after ITEM_RECIPE item-v3: its fields follow the others only in a row that
# has any of it, so every item without a style or structure image keeps its id (a catalogue made
# before does not regenerate), and one with them is named by their content and weights.
CONDITIONING_KEY_COLUMNS = ("__style_image_fp", "style_image_scale", "__structure_fp", "structure_scale")
# A brand overlay, added after conditioning the same way: only items that have one (its files by content).
OVERLAY_KEY_COLUMNS = ("__logo_fp", "logo_position", "logo_size", "headline", "__font_fp", "headline_color",
                       "headline_position")
# Each group of fields an item's key takes only where the item has any of them.
# A watermark ([watermark]) changes the file: only items that carry one.
WATERMARK_KEY_COLUMNS = ("watermark",)
OPTIONAL_KEY_GROUPS = (CONDITIONING_KEY_COLUMNS, OVERLAY_KEY_COLUMNS, WATERMARK_KEY_COLUMNS)


def with_item_ids(df: pl.DataFrame, fingerprints: dict[str, str], model_fps: dict) -> pl.DataFrame:
    """`item_id` of each candidate: everything that shapes its image and file, inputs by content
    (`fingerprints` of its files by URI, `model_fps` of its model by `plan.models.ModelRef`).
    A refinement's starting image is its parent's image, which its parent's item id names."""
    from pipeline.plan.models import fingerprint_column

    c = pl.col
    fp = lambda col: c(col).replace_strict(fingerprints, return_dtype=pl.String)  # noqa: E731 — every URI was checked
    named = df.with_columns(fingerprint_column(df, model_fps), fp("init_image").alias("__init_fp"),
                            fp("mask").alias("__mask_fp"), fp("lora").alias("__lora_fp"),
                            fp("style_image").alias("__style_image_fp"), fp("structure_image").alias("__structure_fp"),
                            fp("logo").alias("__logo_fp"), fp("headline_font").alias("__font_fp"))
    base = keys(named, literal(ITEM_RECIPE), *ITEM_KEY_COLUMNS)
    for group in OPTIONAL_KEY_GROUPS:
        present = pl.any_horizontal(c(k).is_not_null() for k in group)
        if named.select(present.any()).item():
            extra = keys(named, *group)
            base = named.select(pl.when(present).then(pl.concat_str(base, extra)).otherwise(base)).to_series()
    return df.with_columns(hex_ids(base).alias("item_id"))
