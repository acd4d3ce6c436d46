"""Mask outlines for the report: one small transparent PNG per staged product, its edge in
magenta, so a reviewer sees whether generation kept the product intact.

Made from the row's mask or the product's alpha, fitted exactly as generation fitted it (the
same `prepare_inputs`), and written to `report_assets/` next to `report.html`.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.plan.identity import digest, encode
from pipeline.spec import vocabulary
from pipeline.storage.layout import ASSETS, is_outline, outline_path
from pipeline.storage.store import Output


def outline_png(init_image: str, mask: str, width: int, height: int) -> bytes:
    """A transparent PNG the size of the image with the kept product's edge drawn in magenta:
    the keep mask that generation used (same fitting), thresholded at half, its boundary."""
    import numpy as np
    from PIL import Image

    from pipeline.stages.product import prepare_inputs

    _, keep = prepare_inputs(init_image, mask, width, height)
    inside = np.asarray(keep) >= 128
    pad = np.pad(inside, 1, constant_values=False)
    edge = inside & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    rgba = np.zeros((*inside.shape, 4), np.uint8)
    rgba[edge] = (255, 0, 255, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_outlines(results: pa.Table, out: Output) -> tuple[dict[str, str], list[str]]:
    """One outline per staged row (inpainting from a product with a mask or alpha), written to
    `report_assets/`; returns {row id: relative path} and the rows whose inputs could not be read."""
    wanted = ["id", "mode", "init_image", "mask", "width", "height"]
    if not set(wanted) <= set(results.column_names):
        return {}, []
    seen: dict[tuple, str] = {}
    outlines, problems = {}, []
    staged = results.select(wanted).filter(pc.and_(pc.equal(results["mode"], vocabulary.INPAINT), pc.and_(
        pc.is_valid(results["init_image"]), pc.is_valid(results["mask"]))))  # before any row becomes Python
    for r in staged.to_pylist():
        if r["id"] in outlines or not r["init_image"] or not r["mask"]:
            continue
        key = (r["init_image"], r["mask"], r["width"], r["height"])
        if key not in seen:
            rel = outline_path(digest(encode(*key), 10).hex())
            try:
                out.put(rel, outline_png(*key))
            except Exception as e:  # an input moved or unreadable: the report still opens
                problems.append(f"row {r['id']!r}: no mask outline ({type(e).__name__}: {e})")
                seen[key] = ""
                continue
            seen[key] = rel
        if seen[key]:
            outlines[r["id"]] = seen[key]
    for stale in {r for r in out.files(ASSETS) if is_outline(r)} - set(outlines.values()):  # an earlier report's
        out.delete(stale)
    return outlines, problems
