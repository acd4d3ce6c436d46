"""A brand overlay laid out on one image: a logo and a headline, inside the channel's safe area.

Laid out per image, so a 9:16 story and a 728×90 banner each place the logo and the text in
their own safe area (`SAFE_AREA` of each side kept clear). The logo's longer side is `logo_size`
of the image's shorter side, its aspect kept, its opaque pixels pasted exactly. The headline wraps
(between words, or between characters in scripts written without spaces) and shrinks from
`max_text` of the shorter side down to `MIN_TEXT_PX` until it fits its band; one that cannot
fit is an error (`HeadlineDoesNotFit`), never a clipped word.

Pure PIL: the write stage renders it after judgement and before signing (what CLIP and
moderation judged is the image without it).
"""

from __future__ import annotations

import io
from dataclasses import dataclass

from pipeline.spec.inputs import load_font

SAFE_AREA = 0.05  # of each side kept clear: the platforms' own buttons and crops sit there
MIN_TEXT_PX = 10  # below this a headline is not legible: it does not fit
TEXT_BAND = 0.34  # the most of the safe area's height a headline may take
LINE_SPACING = 1.15


def drawn(r: dict) -> bool:
    """Whether a candidate gets a brand overlay (its style's logo, or a headline in its style's
    font): a child of an overlaid image inherits it, and starts from its parent's clean image."""
    return r.get("logo") is not None or r.get("headline") is not None


class HeadlineDoesNotFit(ValueError):
    """The headline needs more room than the image's safe area has, even at the smallest size."""


@dataclass(frozen=True)
class Overlay:
    logo: bytes | None = None  # a PNG with alpha (any image PIL reads)
    logo_position: str = "bottom-right"
    logo_size: float = 0.15  # the logo's longer side, as a fraction of the image's shorter side
    headline: str | None = None
    font: bytes | None = None  # a TrueType / OpenType file's bytes (required with a headline)
    color: tuple[int, int, int] = (255, 255, 255)
    headline_position: str = "top"
    max_text: float = 0.08  # the largest text size, as a fraction of the image's shorter side


@dataclass(frozen=True)
class Layout:
    """Where everything goes on a `size` image: the logo's box, the headline's size and lines."""

    size: tuple[int, int]
    safe: tuple[int, int, int, int]  # left, top, right, bottom
    logo_box: tuple[int, int, int, int] | None = None
    text_px: int | None = None
    lines: tuple[str, ...] = ()
    text_top: int | None = None


def safe_area(width: int, height: int) -> tuple[int, int, int, int]:
    dx, dy = round(width * SAFE_AREA), round(height * SAFE_AREA)
    return dx, dy, width - dx, height - dy


def layout(width: int, height: int, overlay: Overlay) -> Layout:
    """The overlay laid out on a `width` × `height` image (HeadlineDoesNotFit when its text cannot fit)."""
    safe = safe_area(width, height)
    logo_box = _logo_box(safe, min(width, height), overlay) if overlay.logo else None
    if not overlay.headline:
        return Layout((width, height), safe, logo_box)
    px, lines = _fit(overlay, safe, min(width, height))
    line_h = round(px * LINE_SPACING)
    block = line_h * len(lines)
    left, top, right, bottom = safe
    vertical = _axis(overlay.headline_position, "top", "bottom")
    text_top = _place(top, bottom, block, vertical)
    return Layout((width, height), safe, logo_box, px, lines, text_top)


def _axis(position: str, start: str, end: str) -> str:
    """Where `position` puts a thing along one axis: its start, its end, or the middle."""
    if position.startswith(start) or position.endswith(start):
        return "start"
    if position.startswith(end) or position.endswith(end):
        return "end"
    return "middle"


def _logo_box(safe, short_side: int, overlay: Overlay) -> tuple[int, int, int, int]:
    from PIL import Image

    logo = Image.open(io.BytesIO(overlay.logo))
    scale = max(1, round(short_side * overlay.logo_size)) / max(logo.size)
    w, h = max(1, round(logo.width * scale)), max(1, round(logo.height * scale))
    left, top, right, bottom = safe
    x = _place(left, right, w, _axis(overlay.logo_position, "left", "right"))
    y = _place(top, bottom, h, _axis(overlay.logo_position, "top", "bottom"))
    return x, y, x + w, y + h


def _place(start: int, end: int, length: int, where: str) -> int:
    """Where a thing of `length` starts between `start` and `end`: against one, or centred."""
    return {"start": start, "end": end - length, "middle": (start + end - length) // 2}[where]


def _fit(overlay: Overlay, safe, short_side: int) -> tuple[int, tuple[str, ...]]:
    """The largest text size (and its lines) at which the headline fits the safe area's width and
    its band of the height."""
    left, top, right, bottom = safe
    width, band = right - left, (bottom - top) * TEXT_BAND
    largest = max(MIN_TEXT_PX, round(short_side * overlay.max_text))
    for px in range(largest, MIN_TEXT_PX - 1, -1):
        font = load_font(overlay.font, px)
        lines = _wrap(overlay.headline, font, width)
        if lines is not None and round(px * LINE_SPACING) * len(lines) <= band:
            return px, lines
    raise HeadlineDoesNotFit(f"the headline ({len(overlay.headline)} characters) does not fit a "
                             f"{right - left}x{bottom - top} px safe area even at {MIN_TEXT_PX} px: shorten it, "
                             "or use a larger format")


def _wrap(text: str, font, width: float) -> tuple[str, ...] | None:
    """Greedy lines of at most `width` px, broken between words (or between characters where the
    text has no spaces, as Chinese and Japanese are written); None when one word alone is wider."""
    words = text.split()
    joiner = " " if len(words) > 1 else ""
    tokens = words if len(words) > 1 else list(text.strip())
    lines, line = [], ""
    for token in tokens:
        candidate = f"{line}{joiner}{token}" if line else token
        if font.getlength(candidate) <= width:
            line = candidate
            continue
        if not line or font.getlength(token) > width:
            return None
        lines.append(line)
        line = token
    if line:
        lines.append(line)
    return tuple(lines)


def render(image, overlay: Overlay):
    """`image` (PIL RGB) with the overlay drawn on a copy: the logo's opaque pixels exact, the
    headline centred on its lines."""
    from PIL import Image, ImageDraw

    done = image.convert("RGB").copy()
    plan = layout(*done.size, overlay)
    if plan.logo_box is not None:
        x0, y0, x1, y1 = plan.logo_box
        logo = Image.open(io.BytesIO(overlay.logo)).convert("RGBA").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        done.paste(logo.convert("RGB"), (x0, y0), mask=logo.getchannel("A"))
    if plan.lines:
        draw, font = ImageDraw.Draw(done), load_font(overlay.font, plan.text_px)
        left, _, right, _ = plan.safe
        line_h = round(plan.text_px * LINE_SPACING)
        for i, line in enumerate(plan.lines):
            draw.text(((left + right) / 2, plan.text_top + i * line_h), line, font=font, fill=overlay.color,
                      anchor="ma")
    return done
