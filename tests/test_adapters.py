"""Adapters: the Canny edge map, the embedded IP-Adapter and ControlNet, and their loaders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipeline.stages.structure import canny_edges

# ---- the edge map ---------------------------------------------------------------------------
# A step of height c, blurred (sigma 1), has a Sobel magnitude of about 2.5 c across it: 255
# gives ~640, 60 gives ~150 (between the default thresholds 100 and 200), 20 gives ~50.


def _near(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """`mask` grown by `radius` pixels (8-connected)."""
    out = mask.copy()
    for _ in range(radius):
        padded = np.pad(out, 1)
        h, w = out.shape
        out = np.logical_or.reduce([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    return out


def _boundary(shape, top, left, bottom, right) -> np.ndarray:
    ring = np.zeros(shape, bool)
    ring[top:bottom, left:right] = True
    ring[top + 1:bottom - 1, left + 1:right - 1] = False
    return ring


def _components(mask: np.ndarray) -> int:
    """The number of 8-connected components, by flood fill (slow, for small test images)."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return count


def test_filled_rectangle_gives_its_outline():
    img = np.zeros((64, 80, 3), np.uint8)
    img[16:48, 20:60] = 255
    out = canny_edges(img)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255} and (out == out[:, :, :1]).all()
    edges = out[:, :, 0] > 0
    ring = _boundary(edges.shape, 16, 20, 48, 60)
    assert not (edges & ~_near(ring)).any()  # nothing off the outline
    assert (ring <= _near(edges)).all()  # every point of the outline found
    assert _components(edges) == 1  # one closed line, one pixel wide
    assert edges.sum() <= 1.2 * ring.sum()
    # the same picture given as PIL, grey or with alpha gives the same map
    assert (canny_edges(Image.fromarray(img)) == out).all()
    assert (canny_edges(img[:, :, 0]) == out).all()
    assert (canny_edges(np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])) == out).all()


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_image_has_no_edges(value):
    assert not canny_edges(np.full((40, 50, 3), value, np.uint8)).any()


def test_thresholds_and_hysteresis():
    """A weak edge (contrast 60) is kept where it runs on from a strong one and dropped where
    alone; a contrast-20 edge is below the low threshold."""
    img = np.zeros((80, 180), np.uint8)
    fade = np.interp(np.arange(10, 70), [25, 45], [255, 60])  # strong at the top, weak below
    img[10:70, 20:60] = fade[:, None].round()
    img[20:60, 90:130] = 60  # weak square, alone
    img[20:60, 140:170] = 20  # faint square
    joined_bottom = _near(_boundary(img.shape, 10, 20, 70, 60)) & (np.arange(80) >= 60)[:, None]
    top = _near(_boundary(img.shape, 10, 20, 70, 60)) & (np.arange(80) < 12)[:, None]
    alone = _near(_boundary(img.shape, 20, 90, 60, 130))
    faint = _near(_boundary(img.shape, 20, 140, 60, 170))

    def found(**thresholds):
        edges = canny_edges(img, **thresholds)[:, :, 0] > 0
        return [bool(edges[region].any()) for region in (top, joined_bottom, alone, faint)]

    assert found() == [True, True, False, False]
    assert found(low=100, high=140) == [True, True, True, False]  # weak edges are strong now
    assert found(low=170, high=200) == [True, False, False, False]  # weak edges are below low
    assert found(low=20, high=40) == [True, True, True, True]
    assert found(low=900, high=1000) == [False] * 4  # above every gradient
    with pytest.raises(ValueError, match="low <= high"):
        canny_edges(img, low=200, high=100)


def test_hysteresis_follows_a_long_chain():
    """A weak chain snaking through the whole image is kept when one end is strong, and only
    the part still joined to it when the chain is cut."""
    from pipeline.stages.structure import _hysteresis

    n = 512
    weak = np.zeros((n, n), bool)
    weak[::2] = True  # rows joined alternately at the right and the left end
    weak[1::4, -1] = True
    weak[3::4, 0] = True
    strong = np.zeros_like(weak)
    strong[0, 0] = True
    assert (_hysteresis(weak, strong) == weak).all()
    weak[5, -1] = False  # cut between rows 4 and 6
    kept = _hysteresis(weak, strong)
    assert kept[:5].sum() == weak[:5].sum() and not kept[6:].any()
