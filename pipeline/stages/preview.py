"""Previews: a small WebP of each judged candidate, so a reviewer sees the runners-up they choose
from without every rejected image being kept as an asset (`[output].write_rejected`).

A preview is not an asset: unsigned (no C2PA manifest: it claims nothing), outside `images/`
(`layout.preview_path`), never `path`, never checked by `verify`, never a reason to rerun. It is
derived from the candidate's pixels and disposable: one that is missing is simply not shown.
A moderation-blocked image gets none (`judge/files.previewed`): a copy small enough to glance at
is still a copy of what moderation blocked.
"""

from __future__ import annotations

import io
import logging

import numpy as np

from pipeline.judge.files import previewed
from pipeline.spec.channel_formats import delivered_size
from pipeline.storage.layout import preview_path

PREVIEW_SIDE = 256  # the longest side, in pixels: a card on the contact sheet, a cell of the comparison
PREVIEW_QUALITY = 80  # lossy WebP: a few kB, plenty to compare candidates by eye

log = logging.getLogger(__name__)


def preview_bytes(pixels: np.ndarray) -> bytes:
    """HxWx3 uint8 RGB → a WebP whose longest side is at most `PREVIEW_SIDE` (never enlarged),
    with no metadata."""
    from PIL import Image

    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    image.thumbnail((PREVIEW_SIDE, PREVIEW_SIDE), Image.Resampling.LANCZOS)
    buffer = io.BytesIO()
    image.save(buffer, "WEBP", quality=PREVIEW_QUALITY)
    return buffer.getvalue()


def write_preview(out, r: dict, pixels: bytes | None, previews: bool) -> None:
    """Write the preview of a judged candidate and record it (`preview_path`); forget it where the
    candidate may not be previewed any more (the file goes with the strays). Without pixels (an
    earlier run's candidate, not made again) the recorded preview stands.

    `out.put` is the one atomic write (whole or absent, locally and on object storage); no lock
    check: a preview is derived from the item id's own pixels, so a late one is the same file.
    A failed preview is logged and left out: it never fails the candidate."""
    if not previewed(r, previews):
        r["preview_path"] = None
        return
    if pixels is None:
        return
    width, height = delivered_size(r["width"], r["height"], r.get("variant"))
    rel = preview_path(r["item_id"])
    try:
        out.put(rel, preview_bytes(np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)))
    except Exception as e:  # noqa: BLE001 — disposable: the candidate's outcome does not depend on it
        log.warning("preview of %s not written: %s: %s", r["item_id"], type(e).__name__, e)
        return
    r["preview_path"] = rel
