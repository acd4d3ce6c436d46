"""Input files named in the user's tables (product photos, masks, reference images, LoRAs):
each value resolved to a URI once, confined to the job's allowed schemes and roots, and each
distinct file read once (bounded, as every input) for its content fingerprint and, for an
image, a decode check and whether it has transparency.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import polars as pl

from pipeline.errors import MAX_REPORTED, Problem, refusal
from pipeline.spec.config import JobConfig
from pipeline.storage import paths, uris


@dataclass(frozen=True)
class InputFile:
    """An input file as checked once per use: what its content is, whether it has transparency,
    and what it was checked as (a file named as a logo and as a font is checked as both)."""

    fingerprint: str
    has_alpha: bool = False
    checked_as: tuple[str, ...] = ()


def uri_column(column: str) -> str:
    """The column holding `column`'s values resolved (`pipeline.storage.paths.resolve`)."""
    return f"__uri_{column}"


def inspect_image(uri: str) -> InputFile:
    """Read an input image once (bounded, as every input: `pipeline.storage.uris`): its content
    fingerprint, and a decode check."""
    import io

    from PIL import Image

    if paths.split(uri)[0] == paths.LOCAL:
        data = uris.read_bytes(uri, uris.IMAGE)
        fingerprint, source = uris.content_digest(data), io.BytesIO(data)
    else:  # the store's own fingerprint (its listing: one object, within the limit); the header
        # is read to check it is an image, with no second listing
        listing = uris.info(uri, uris.IMAGE)
        fingerprint, source = uris.fingerprint(uri, uris.IMAGE, listing), uris.open_input(uri, uris.IMAGE, listing)
    with source, Image.open(source) as im:
        alpha = im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)
        im.verify()
    return InputFile(fingerprint, alpha)


def inspect_file(uri: str) -> InputFile:
    return InputFile(uris.fingerprint(uri, uris.WEIGHTS))


def load_font(data: bytes, size: int):
    """A TrueType / OpenType font at `size` px, or ValueError saying the file is not one."""
    import io

    from PIL import ImageFont

    try:
        return ImageFont.truetype(io.BytesIO(data), size)
    except OSError:
        raise ValueError("not a TrueType or OpenType font file") from None


def inspect_font(uri: str) -> InputFile:
    """A headline font: read once (bounded, as an image is), its content fingerprint, and a load check."""
    data = uris.read_bytes(uri, uris.IMAGE)
    load_font(data, 12)
    return InputFile(uris.content_digest(data))


def with_uris(df: pl.DataFrame, column: str, base: str) -> tuple[pl.DataFrame, dict[str, str]]:
    """`column`'s values resolved (`pipeline.storage.paths.resolve`, relative to `base`) into
    `uri_column(column)`, and why for each value that names no place (its URI null)."""
    why: dict[str, str] = {}
    resolved: dict[str, str] = {}
    for value in df[column].drop_nulls().unique().to_list():
        try:
            resolved[value] = paths.resolve(value, base)
        except ValueError as e:
            why[value] = str(e)
    df = df.with_columns(pl.col(column).replace_strict(resolved, default=None, return_dtype=pl.String)
                         .alias(uri_column(column)))
    return df, why


def check_inputs(df: pl.DataFrame, column: str, base: str, cfg: JobConfig, inspect, file: str,
                 id_col: str, files: dict[str, InputFile]) -> tuple[pl.DataFrame, list[Problem], int]:
    """Resolve `column`'s values into `uri_column(column)`, then check each distinct file once
    (allowed scheme and roots, present, readable) and record it in `files`. Returns the frame,
    the first problems (one per row using a bad file) and their count."""
    df, why = with_uris(df, column, base)
    values = df.select(column, uri_column(column)).drop_nulls().unique().iter_rows()
    resolved = dict(values)
    refused: dict[str, str] = {}  # resolved URI → why (two values may name one file)
    kind = {inspect_image: "image", inspect_font: "font"}.get(inspect, "file")
    for uri in {u for u in resolved.values() if u not in files or kind not in files[u].checked_as}:
        if (outside := paths.problem(uri, cfg.job.allowed_input_roots, cfg.job.allowed_input_schemes)):
            refused[uri] = outside
            continue
        try:
            found = files.get(uri) or inspect(uri)
            if uri in files:  # read before for another use: checked for this one too
                inspect(uri)
            files[uri] = dataclasses.replace(found, checked_as=(*found.checked_as, kind))
        except Exception as e:  # noqa: BLE001 — credentials, network, a missing fsspec backend: name it
            refused[uri] = refusal(e, uri, "file", kind)
    why.update((value, refused[uri]) for value, uri in resolved.items() if uri in refused)
    bad = df.filter(pl.col(column).is_in(list(why))).select("__row", id_col, column)
    found = [Problem(file, why[v], row=int(r), id=i, column=column)
             for r, i, v in bad.head(MAX_REPORTED).iter_rows()]
    return df, found, len(bad)
