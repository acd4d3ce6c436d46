"""Outpainting a source image to a channel format: the canvas, the image the inpainting starts
from, the mask of what it may paint, and the finished format.

The rules (spec/channel_formats.py names the formats, plan/canvas.py sizes the canvas):
- The margins start from the source's own edge content (mirrored outwards, then blurred), not
  flat grey, so the painted margin continues the picture and the seam does not show.
- The source's pixels come back exact in every aspect format (they are pasted back over what
  the model painted); an exact size (`300x250`) is that canvas resized to exactly its pixels.

Pure numpy and PIL: no model here (the generate stage runs the inpainting).
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.plan.canvas import Canvas, canvas_for
from pipeline.spec.channel_formats import ChannelFormat

BLUR_FRACTION = 1 / 16  # the margin's blur radius, as a fraction of the source's shorter side


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
