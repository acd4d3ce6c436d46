"""Outpainting a source image to a channel format: the canvas, the image the inpainting starts
from, the mask of what it may paint, and the finished format.

The rules (spec/channel_formats.py names the formats):
- The canvas is the source plus margins, never cropped or scaled: each side a multiple of 8 and
  at least the source's, the aspect as close to the format's as that allows (the error is at
  most 4 px of the shorter side: under 1% from 512 px up).
- The source sits where `placement` says (`center`, or against one edge), on the 8-px grid so the
  seam falls between latent cells.
- The margins start from the source's own edge content (mirrored outwards, then blurred), not
  flat grey, so the painted margin continues the picture and the seam does not show.
- The source's pixels come back exact in every aspect format (they are pasted back over what
  the model painted); an exact size (`300x250`) is that canvas resized to exactly its pixels.

Pure numpy and PIL: no model here (the generate stage runs the inpainting).
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from pipeline.spec.channel_formats import ChannelFormat

GRID = 8  # the VAE's downsampling: canvas sides and the source's offset are multiples of it
BLUR_FRACTION = 1 / 16  # the margin's blur radius, as a fraction of the source's shorter side


@dataclass(frozen=True)
class Canvas:
    """A format's canvas and where the source sits on it (pixels, from the top-left corner)."""

    width: int
    height: int
    left: int
    top: int
    source: tuple[int, int]  # (width, height) of the source

    @property
    def box(self) -> tuple[int, int, int, int]:
        w, h = self.source
        return self.left, self.top, self.left + w, self.top + h

    @property
    def extends(self) -> bool:
        """Whether there is any margin to paint."""
        return (self.width, self.height) != self.source


def _up(x: int) -> int:
    return -(-x // GRID) * GRID


def _nearest_side(ideal: Fraction, at_least: int) -> int:
    """The multiple of GRID nearest `ideal`, and no smaller than `at_least` (itself on the grid)."""
    low = max(at_least, int(ideal) // GRID * GRID)
    high = max(at_least, _up(-(-ideal.numerator // ideal.denominator)))
    return low if abs(low - ideal) <= abs(high - ideal) else high


def canvas_for(width: int, height: int, fmt: ChannelFormat, placement: str = "center") -> Canvas:
    """The canvas that extends a `width` × `height` source to `fmt`'s aspect (see the module)."""
    w0, h0 = _up(width), _up(height)
    if Fraction(w0, h0) < fmt.aspect:  # wider: keep the height, add width
        cw, ch = _nearest_side(h0 * fmt.aspect, w0), h0
    else:  # taller (or already there): keep the width, add height
        cw, ch = w0, _nearest_side(w0 / fmt.aspect, h0)
    return Canvas(cw, ch, _offset(cw - width, placement, "left", "right"),
                  _offset(ch - height, placement, "top", "bottom"), (width, height))


def _offset(spare: int, placement: str, start: str, end: str) -> int:
    """Where the source starts along one axis: against `start`, against `end`, else centred on
    the grid (a placement along the other axis centres it here)."""
    if placement == start:
        return 0
    if placement == end:
        return spare
    return spare // 2 // GRID * GRID


def start_image(source, canvas: Canvas):
    """The image the margins are painted from: the source mirrored outwards to fill the canvas,
    blurred so that its structure is gone but its colours and light carry on, with the source
    itself exact in its place."""
    import numpy as np
    from PIL import Image, ImageFilter

    rgb = np.asarray(source.convert("RGB"))
    left, top, right, bottom = canvas.box
    padded = np.pad(rgb, ((top, canvas.height - bottom), (left, canvas.width - right), (0, 0)), mode="symmetric")
    radius = max(2.0, min(canvas.source) * BLUR_FRACTION)
    start = Image.fromarray(padded).filter(ImageFilter.GaussianBlur(radius))
    start.paste(source.convert("RGB"), (left, top))
    return start


def margin_mask(canvas: Canvas):
    """White where the model paints (the margins), black over the source."""
    from PIL import Image

    mask = Image.new("L", (canvas.width, canvas.height), 255)
    mask.paste(0, canvas.box)
    return mask


@dataclass(frozen=True)
class Outpainting:
    """One candidate's outpainting: the source, the format and its canvas, what the inpainting
    pipeline is given (the start image and the margin mask)."""

    source: object  # PIL RGB image
    fmt: ChannelFormat
    canvas: Canvas
    start: object  # PIL RGB image, canvas-sized
    mask: object  # PIL L image, canvas-sized, white = paint

    def finish(self, painted):
        return finish(painted, self.source, self.canvas, self.fmt)


def prepare(source: bytes, variant: str, placement: str, planned: tuple[int, int]) -> Outpainting:
    """A format's outpainting from its source image's bytes; ValueError when the canvas is not
    the size the plan gave the candidate (the source is not the image it was planned from)."""
    from pipeline.spec.channel_formats import parse
    from pipeline.storage.uris import load_image

    image = load_image(source).convert("RGB")
    fmt = parse(variant)
    canvas = canvas_for(*image.size, fmt, placement)
    if (canvas.width, canvas.height) != tuple(planned):
        raise ValueError(f"the {variant} canvas of a {image.size[0]}x{image.size[1]} source is "
                         f"{canvas.width}x{canvas.height}, planned {planned[0]}x{planned[1]}")
    return Outpainting(image, fmt, canvas, start_image(image, canvas), margin_mask(canvas))


def finish(painted, source, canvas: Canvas, fmt: ChannelFormat):
    """The format: the source pasted back exact over the painted canvas; an exact size then
    resized to its pixels."""
    from PIL import Image

    out = painted.convert("RGB").resize((canvas.width, canvas.height), Image.Resampling.LANCZOS) \
        if painted.size != (canvas.width, canvas.height) else painted.convert("RGB").copy()
    out.paste(source.convert("RGB"), (canvas.left, canvas.top))
    return out.resize(fmt.size, Image.Resampling.LANCZOS) if fmt.exact else out
