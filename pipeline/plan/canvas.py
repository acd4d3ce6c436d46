"""A channel format's canvas: the source plus margins, never cropped or scaled. Each side is a
multiple of 8 and at least the source's, the aspect as close to the format's as that allows
(the error is at most 4 px of the shorter side: under 1% from 512 px up); the source sits where
`placement` says (`center`, or against one edge), on the 8-px grid so the seam falls between
latent cells. Planning sizes a format's candidate by it; outpainting paints its margins.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

from pipeline.spec.channel_formats import ChannelFormat

GRID = 8  # the VAE's downsampling: canvas sides and the source's offset are multiples of it


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
