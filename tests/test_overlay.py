"""A brand overlay (logo and headline) laid out per format inside the safe area: opaque logo pixels
exact, text that wraps and shrinks rather than overflowing, a non-Latin headline rendered, and a
headline that cannot fit refused."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.stages.overlay import (
    MIN_TEXT_PX,
    HeadlineDoesNotFit,
    Overlay,
    layout,
    load_font,
    render,
    safe_area,
)

LATIN = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
CJK = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")  # Debian's fonts-wqy-microhei (.ci/run installs it)


def _font(path: Path) -> bytes:
    if not path.is_file():
        why = f"no {path}: apt-get install -y fonts-dejavu-core fonts-wqy-microhei (.ci/run does)"
        if os.environ.get("ASSET_PIPELINE_FONT_TESTS") == "required":
            pytest.fail(why)
        pytest.skip(why)
    return path.read_bytes()


def _logo() -> bytes:
    """A 40×20 logo: an opaque red bar with a transparent surround and a half-transparent edge."""
    logo = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    logo.paste((200, 20, 20, 255), (4, 4, 36, 16))
    logo.paste((20, 20, 200, 128), (0, 0, 40, 2))
    buf = io.BytesIO()
    logo.save(buf, "PNG")
    return buf.getvalue()


def _background(w, h):
    return Image.fromarray(np.full((h, w, 3), 90, np.uint8))


@pytest.mark.parametrize("size", [(512, 512), (288, 512), (728, 90), (300, 250)])
@pytest.mark.parametrize("position", ["top-left", "bottom-right", "center", "bottom"])
def test_the_logo_sits_in_the_safe_area_at_its_size_with_its_opaque_pixels_exact(size, position):
    w, h = size
    overlay = Overlay(logo=_logo(), logo_position=position, logo_size=0.2)
    box = layout(w, h, overlay).logo_box
    left, top, right, bottom = safe_area(w, h)
    assert left <= box[0] and top <= box[1] and box[2] <= right and box[3] <= bottom
    assert max(box[2] - box[0], box[3] - box[1]) == round(min(w, h) * 0.2)
    out = np.asarray(render(_background(w, h), overlay))
    rendered = Image.open(io.BytesIO(_logo())).convert("RGBA").resize((box[2] - box[0], box[3] - box[1]),
                                                                      Image.Resampling.LANCZOS)
    opaque = np.asarray(rendered)[..., 3] == 255
    patch = out[box[1]:box[3], box[0]:box[2]]
    assert opaque.any() and np.array_equal(patch[opaque], np.asarray(rendered)[..., :3][opaque])
    outside = np.ones((h, w), bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert (out[outside] == 90).all()  # nothing drawn but the logo


def test_a_long_headline_wraps_and_shrinks_inside_the_safe_area_of_each_format():
    font = _font(LATIN)
    text = "Summer collection: light linen shirts for warm evenings by the sea"
    sizes = {}
    for w, h in [(512, 512), (288, 512), (728, 90)]:
        plan = layout(w, h, Overlay(headline=text, font=font))
        left, top, right, bottom = plan.safe
        f = load_font(font, plan.text_px)
        assert " ".join(plan.lines) == text and all(f.getlength(line) <= right - left for line in plan.lines)
        assert top <= plan.text_top and plan.text_top + len(plan.lines) * plan.text_px * 1.15 <= bottom + 1
        sizes[w, h] = (plan.text_px, len(plan.lines))
    assert sizes[288, 512][1] > 1  # the narrow story wraps
    assert sizes[728, 90][0] < sizes[512, 512][0]  # the short banner shrinks it


def test_a_headline_that_cannot_fit_is_refused_not_clipped():
    with pytest.raises(HeadlineDoesNotFit, match=f"does not fit a .* safe area even at {MIN_TEXT_PX} px"):
        layout(300, 60, Overlay(headline="word " * 80, font=_font(LATIN)))


def test_a_chinese_headline_renders_broken_between_characters():
    font = _font(CJK)
    text = "夏季新品上市，轻盈亚麻衬衫，海边温暖夜晚的最佳选择"
    plan = layout(256, 256, Overlay(headline=text, font=font))
    assert "".join(plan.lines) == text and len(plan.lines) > 1
    out = np.asarray(render(_background(256, 256), Overlay(headline=text, font=font, color=(255, 255, 0))))
    band = out[plan.text_top:plan.text_top + len(plan.lines) * plan.text_px]
    assert ((band == [255, 255, 0]).all(axis=2)).sum() > 200  # glyphs drawn, not boxes of nothing
    assert (out[:plan.text_top] == 90).all()
    f = load_font(font, 32)  # real glyphs: two characters differ (a font without them draws the same box)
    assert bytes(f.getmask("夏")) != bytes(f.getmask("海"))
    dejavu = load_font(_font(LATIN), 32)
    assert bytes(dejavu.getmask("夏")) == bytes(dejavu.getmask("海"))  # what the check tells apart


def test_a_file_that_is_not_a_font_is_named():
    with pytest.raises(ValueError, match="not a TrueType or OpenType font file"):
        load_font(b"not a font", 12)
