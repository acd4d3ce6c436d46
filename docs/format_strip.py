"""The README's format strip: one written image and its channel formats side by side, at one
height, each labelled with its format and its pixels, the source's place outlined on each format.

    make docs-pictures
    # or, by hand: a run of docs/format-strip.toml, then
    python -m docs.format_strip out/format-strip docs/format-strip.png --id stage-mug-01

It reads a finished output the way `report` does, through `pipeline.storage` (the results table,
the latest run record, the images by the `path` the results give them), so it works on a local
folder and on an S3 prefix alike. The outline is where the plan put the source
(`pipeline.plan.canvas.canvas_for` with the format's `placement`), scaled for an exact size
(`300x250`) the way its canvas was resized: computed, never guessed from the pixels.

Which source: the written image whose written formats are the most (the first row and candidate
among equals), or a row's by `--id`. Panels: the source, then its formats in the order of the
job's `[formats].sizes` (the latest run's), a style's own formats after them by aspect.
"""

from __future__ import annotations

import argparse
import io
import sys
from dataclasses import dataclass
from fractions import Fraction

from pipeline.plan.canvas import canvas_for
from pipeline.spec import channel_formats, vocabulary
from pipeline.storage.records import latest_run, read_results
from pipeline.storage.store import Output, as_output

COLUMNS = ["item_id", "id", "row", "candidate", "status", "path", "parent", "variant", "placement"]
HEIGHT = 200  # every panel's image is drawn this many pixels high
GAP, LABEL = 14, 40  # between panels and around the strip; the band under each panel for its label
BACKGROUND, INK, OUTLINE = (255, 255, 255), (30, 30, 30), (255, 214, 0)
OUTLINE_WIDTH = 2
COLOURS = 256  # the PNG is palette-quantised to stay small (the tiny models draw noise, which PNG cannot shrink)


@dataclass(frozen=True)
class Panel:
    """One image of the strip: its label, its pixels and where the source sits in them (None for
    the source itself)."""

    name: str  # "source", or the format's name
    image: object  # PIL RGB image, as written
    box: tuple[int, int, int, int] | None  # left, top, right, bottom in the image's pixels

    @property
    def size(self) -> tuple[int, int]:
        return self.image.size

    @property
    def label(self) -> str:
        return f"{self.name}  {self.size[0]}x{self.size[1]}"


@dataclass(frozen=True)
class Placed:
    """Where a panel went on the strip (strip pixels): its image and the outline of its source."""

    label: str
    rect: tuple[int, int, int, int]  # left, top, right, bottom of the image drawn
    outline: tuple[int, int, int, int] | None


def pick(rows: list[dict], row_id: str | None = None) -> tuple[dict, list[dict]]:
    """The source (a written image that is not itself a format) with the most written formats,
    and those formats (one per format name); ValueError when there is none."""
    def shown(r: dict) -> bool:
        return r["status"] == vocabulary.WRITTEN and r["path"] is not None

    formats: dict[str, dict[str, dict]] = {}
    for r in rows:
        if shown(r) and r["variant"] is not None and r["parent"] is not None:
            formats.setdefault(r["parent"], {}).setdefault(r["variant"], r)
    sources = [r for r in rows if shown(r) and r["variant"] is None and r["item_id"] in formats
               and (row_id is None or r["id"] == row_id)]
    if not sources:
        which = f"row {row_id!r}" if row_id else "any row"
        raise ValueError(f"no written image of {which} has a written channel format (a job with [formats])")
    source = min(sources, key=lambda r: (-len(formats[r["item_id"]]), r["row"], r["candidate"]))
    return source, list(formats[source["item_id"]].values())


def ordered(children: list[dict], job_sizes: list[str]) -> list[dict]:
    """The formats in the job's order; names the job does not list (a style's own) after, by aspect."""
    rank = {channel_formats.parse(name).name: i for i, name in enumerate(job_sizes)}

    def key(r: dict) -> tuple:
        f = channel_formats.parse(r["variant"])
        return (rank.get(f.name, len(rank)), f.exact, f.aspect, f.name)

    return sorted(children, key=key)


def source_box(source_size: tuple[int, int], variant: str, placement: str | None) -> tuple[int, int, int, int]:
    """Where the source sits in a format's image: the plan's canvas, scaled as an exact size was."""
    fmt = channel_formats.parse(variant)
    canvas = _canvas(source_size, fmt, placement)
    if not fmt.exact:
        return canvas.box
    sx, sy = Fraction(fmt.size[0], canvas.width), Fraction(fmt.size[1], canvas.height)
    left, top, right, bottom = canvas.box
    return round(left * sx), round(top * sy), round(right * sx), round(bottom * sy)


def _canvas(source_size: tuple[int, int], fmt: channel_formats.ChannelFormat, placement: str | None):
    """The plan's canvas for a format (the plan's default placement where the results name none)."""
    return canvas_for(*source_size, fmt, placement) if placement else canvas_for(*source_size, fmt)


def panels(output: Output | str, row_id: str | None = None) -> list[Panel]:
    """The source and its formats, in order, read from a finished output."""
    out = as_output(output)
    rows = read_results(out, COLUMNS).to_pylist()
    source, children = pick(rows, row_id)
    run = latest_run(out)
    sizes = list((run.record.get("config") or {}).get("formats", {}).get("sizes", [])) if run else []
    first = Panel("source", _image(out, source["path"]), None)
    made = [first]
    for r in ordered(children, sizes):
        image = _image(out, r["path"])
        fmt = channel_formats.parse(r["variant"])
        canvas = _canvas(first.size, fmt, r["placement"])
        expected = channel_formats.delivered_size(canvas.width, canvas.height, r["variant"])
        if image.size != expected:
            raise ValueError(f"{r['path']}: a {r['variant']} format of a {first.size[0]}x{first.size[1]} source "
                             f"is {expected[0]}x{expected[1]}, this image is {image.size[0]}x{image.size[1]}")
        made.append(Panel(fmt.name, image, source_box(first.size, r["variant"], r["placement"])))
    return made


def _image(out: Output, rel: str):
    from PIL import Image

    return Image.open(io.BytesIO(out.get(rel))).convert("RGB")


def compose(shown: list[Panel], height: int = HEIGHT):
    """The strip (a PIL RGB image) and where each panel went on it: every image `height` pixels
    high (nearest-neighbour when enlarged, so tiny images stay sharp), its label under it, the
    source's place outlined on each format."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=max(11, height // 14))
    scaled, placed, x = [], [], GAP
    for p in shown:
        scale = Fraction(height, p.size[1])
        width = round(p.size[0] * scale)
        resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS
        scaled.append(p.image.resize((width, height), resample))
        outline = None if p.box is None else (x + round(p.box[0] * scale), GAP + round(p.box[1] * scale),
                                              x + round(p.box[2] * scale), GAP + round(p.box[3] * scale))
        placed.append(Placed(p.label, (x, GAP, x + width, GAP + height), outline))
        x += width + GAP
    strip = Image.new("RGB", (x, GAP + height + LABEL), BACKGROUND)
    draw = ImageDraw.Draw(strip)
    for image, p in zip(scaled, placed, strict=True):
        strip.paste(image, p.rect[:2])
        if p.outline is not None:  # inside the source's edge, so the margins stay as painted
            left, top, right, bottom = p.outline
            draw.rectangle((left, top, right - 1, bottom - 1), outline=OUTLINE, width=OUTLINE_WIDTH)
        draw.text((p.rect[0], p.rect[3] + LABEL // 4), p.label, fill=INK, font=font)
    return strip, placed


def save(strip, path: str) -> None:
    """The strip as a small PNG (palette-quantised)."""
    from PIL import Image

    small = strip.quantize(colors=COLOURS, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
    small.save(path, optimize=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m docs.format_strip", description=__doc__.split("\n\n")[0])
    parser.add_argument("output", help="a finished output folder or prefix (a run of a job with [formats])")
    parser.add_argument("png", help="where the strip goes (a local file)")
    parser.add_argument("--id", help="the manifest row whose image to show (default: the one with the most formats)")
    parser.add_argument("--height", type=int, default=HEIGHT, help=f"pixels of every image (default {HEIGHT})")
    args = parser.parse_args(argv)
    try:
        shown = panels(args.output, args.id)
    except (ValueError, OSError) as e:
        print(f"format_strip: {e}", file=sys.stderr)
        return 1
    strip, placed = compose(shown, args.height)
    save(strip, args.png)
    print(f"{args.png}: {strip.size[0]}x{strip.size[1]}, " + ", ".join(p.label for p in placed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
