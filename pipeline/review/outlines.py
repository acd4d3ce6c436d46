"""Mask outlines for the report: one small transparent PNG per staged product, its edge in
magenta, so a reviewer sees whether generation kept the product intact.

Made from the row's mask or the product's alpha, fitted exactly as generation fitted it (the
same `prepare_inputs`), and written to `report_assets/` next to `report.html`.
"""

from __future__ import annotations

import io

import numpy as np
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


class Outlines:
    """One outline per staged product (inpainting from a product with a mask or alpha), drawn as
    the results stream past a batch at a time (`add`) and written to `report_assets/`; `close`
    removes an earlier report's that none of these rows names. Memory: one entry per distinct
    product and size, never per candidate. `problems`: the rows whose inputs could not be read."""

    COLUMN = "__outline"  # the column `add` gives each candidate: its outline's path (null: none)
    INPUTS = ("id", "mode", "init_image", "mask", "width", "height")

    def __init__(self, out: Output):
        self.out = out
        self.drawn: dict[tuple, str] = {}  # (product, mask, width, height) → path ("": could not be drawn)
        self.problems: list[str] = []

    def add(self, batch: pa.Table) -> pa.Table:
        """`batch` with the column `COLUMN`; a staged product's outline drawn the first time it is seen."""
        if not set(self.INPUTS) <= set(batch.column_names):
            return batch.append_column(self.COLUMN, pa.nulls(batch.num_rows, pa.string()))
        staged = pc.and_(pc.equal(batch["mode"], vocabulary.INPAINT),
                         pc.and_(pc.is_valid(batch["init_image"]), pc.is_valid(batch["mask"])))
        paths: list[str | None] = [None] * batch.num_rows
        rows = batch.select(list(self.INPUTS)).filter(staged).to_pylist()  # before any other row becomes Python
        for at, r in zip(np.flatnonzero(pc.fill_null(staged, False).to_numpy(zero_copy_only=False)), rows,
                         strict=True):
            if r["init_image"] and r["mask"]:
                paths[at] = self._draw(r) or None
        return batch.append_column(self.COLUMN, pa.array(paths, pa.string()))

    def _draw(self, r: dict) -> str:
        key = (r["init_image"], r["mask"], r["width"], r["height"])
        if key not in self.drawn:
            rel = outline_path(digest(encode(*key), 10).hex())
            try:
                self.out.put(rel, outline_png(*key))
            except Exception as e:  # an input moved or unreadable: the report still opens
                self.problems.append(f"row {r['id']!r}: no mask outline ({type(e).__name__}: {e})")
                rel = ""
            self.drawn[key] = rel
        return self.drawn[key]

    def close(self) -> None:
        """Remove the outlines of earlier reports that no row of this one names."""
        for stale in {r for r in self.out.files(ASSETS) if is_outline(r)} - set(self.drawn.values()):
            self.out.delete(stale)
