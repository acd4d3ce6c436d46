"""A structure image made into what a ControlNet reads: its Canny edge map.

Canny (1986) in numpy, no extra model and no OpenCV: Gaussian blur, Sobel gradients, thinning
by non-maximum suppression, then a double threshold with hysteresis (a weak edge is kept only
where it joins a strong one). Thresholds are in OpenCV's units, the Sobel gradient magnitude
of 0–255 intensities, so `low=100, high=200` means what it means to `cv2.Canny`. Vectorised
throughout; deterministic.
"""

from __future__ import annotations

import numpy as np

# Neighbour offsets (dy, dx) along the gradient for each quantised gradient direction:
# 0° (horizontal gradient: a vertical edge), 45°, 90°, 135°; rows grow downwards.
_ALONG = ((0, 1), (1, 1), (1, 0), (1, -1))
_TIE = 1e-3  # gradients closer than this are equal (they reach ~1000; float32 noise ~1e-4)
_AROUND = [(dy, dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)]


def canny_edges(image, *, low: float = 100.0, high: float = 200.0, sigma: float = 1.0) -> np.ndarray:
    """The edge map of `image` (PIL image or HxW / HxWxC uint8 array): an HxWx3 uint8 array,
    255 on edges, 0 elsewhere, as ControlNet's canny models take it. Hand it to a pipeline as
    a PIL image (`Image.fromarray`): diffusers reads a numpy array as floats in [0, 1]."""
    if not 0 <= low <= high:
        raise ValueError(f"Canny thresholds need 0 <= low <= high, got low={low}, high={high}")
    gray = _luminance(np.asarray(image))
    magnitude, gy, gx = _gradients(_blur(gray, sigma))
    thin = _non_maximum_suppression(magnitude, gy, gx)
    edges = _hysteresis(thin >= low, thin >= high)
    return np.repeat((edges * np.uint8(255))[:, :, None], 3, axis=2)


def _luminance(pixels: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (as PIL's "L"), float32 0–255; alpha is ignored."""
    pixels = pixels.astype(np.float32)
    if pixels.ndim == 2:
        return pixels
    if pixels.shape[2] < 3:
        return pixels[:, :, 0]
    return pixels[:, :, :3] @ np.array([0.299, 0.587, 0.114], np.float32)


def _blur(gray: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian, borders replicated (a flat image stays flat: no edge at the frame)."""
    if sigma <= 0:
        return gray
    radius = max(1, int(np.ceil(3 * sigma)))
    taps = np.exp(-0.5 * (np.arange(-radius, radius + 1, dtype=np.float32) / sigma) ** 2)
    return _separable(gray, taps / taps.sum(), taps / taps.sum())


def _separable(img: np.ndarray, along_y: np.ndarray, along_x: np.ndarray) -> np.ndarray:
    """Correlate with the outer product of two odd 1-D kernels, borders replicated."""
    r = len(along_y) // 2
    padded = np.pad(img, r, mode="edge")
    h, w = img.shape
    rows = sum(k * padded[i:i + h, :] for i, k in enumerate(along_y) if k)
    return sum(k * rows[:, i:i + w] for i, k in enumerate(along_x) if k)


def _gradients(img: np.ndarray):
    """(magnitude, d/dy, d/dx) by the 3×3 Sobel operator."""
    smooth, diff = np.array([1, 2, 1], np.float32), np.array([-1, 0, 1], np.float32)
    gx = _separable(img, smooth, diff)
    gy = _separable(img, diff, smooth)
    return np.hypot(gx, gy), gy, gx


def _non_maximum_suppression(magnitude: np.ndarray, gy: np.ndarray, gx: np.ndarray) -> np.ndarray:
    """The magnitude where it peaks across the edge, else 0: each pixel is compared with its two
    neighbours along the gradient, quantised to 45°. Ties go to the first pixel of a plateau
    (above the one before, at least the one after, as OpenCV does), so a step edge spread over
    two equal pixels by the blur stays one pixel wide; "equal" allows for rounding (`_TIE`), or
    float noise would pick a side pixel by pixel and the outline would zigzag."""
    angle = np.rad2deg(np.arctan2(gy, gx)) % 180.0
    sector = (((angle + 22.5) // 45.0).astype(np.int8)) % 4
    padded = np.pad(magnitude, 1)
    h, w = magnitude.shape
    keep = np.zeros(magnitude.shape, bool)
    for s, (dy, dx) in enumerate(_ALONG):
        after = padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        before = padded[1 - dy:1 - dy + h, 1 - dx:1 - dx + w]
        keep |= (sector == s) & (magnitude > before + _TIE) & (magnitude >= after - _TIE)
    return np.where(keep, magnitude, 0.0)


def _hysteresis(weak: np.ndarray, strong: np.ndarray) -> np.ndarray:
    """The 8-connected components of `weak` that hold a pixel of `strong`.

    Components are found on the weak pixels only (a few percent of the image) by a parallel
    union-find: each round, every tree whose pixels touch a tree with a smaller root is hooked
    onto the smallest such root, then every pixel points straight at its root. Each round at
    least halves the trees that still touch another, so a long chain settles in about log n
    rounds (spreading a label one pixel per round would take n).
    """
    h, w = weak.shape
    cand = np.flatnonzero(weak)
    if cand.size == 0:
        return np.zeros((h, w), bool)
    ys, xs = np.divmod(cand, w)
    me = np.arange(cand.size)
    index = np.full((h + 2, w + 2), -1, np.int64)  # pixel → its place in `cand`, -1 off it
    index[ys + 1, xs + 1] = me
    around = [index[ys + 1 + dy, xs + 1 + dx] for dy, dx in _AROUND]
    pairs = np.concatenate([me[n >= 0] for n in around]), np.concatenate([n[n >= 0] for n in around])
    root = me.copy()
    while True:
        a, b = root[pairs[0]], root[pairs[1]]
        apart = a != b
        if not apart.any():
            break
        np.minimum.at(root, np.maximum(a, b)[apart], np.minimum(a, b)[apart])  # hook
        while not np.array_equal(root, nxt := root[root]):  # compress
            root = nxt
    rooted = np.zeros(cand.size, bool)
    rooted[root[strong.flat[cand]]] = True
    keep = np.zeros(h * w, bool)
    keep[cand[rooted[root]]] = True
    return keep.reshape(h, w)
