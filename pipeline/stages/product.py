"""The product photo through generation: fitted, laid onto the starting image, composited back.

Image-to-image and inpainting start from the product (or, for a refinement, from its parent's
image); what is kept of the product is pasted back over the generated image exactly once. Kept
apart from the batching of `generate.py` so the review's outlines (`review/outlines.py`) fit
the product with the very same rule generation used.
"""

from __future__ import annotations

import numpy as np

from pipeline.spec.vocabulary import IMG2IMG, INPAINT
from pipeline.stages.contract import CANVAS
from pipeline.storage.uris import load_image

FILL = (127, 127, 127)  # neutral grey, 0 in the pipelines' [-1, 1] range: "nothing here yet"


def prepare_inputs(init: str | bytes, mask_uri: str | None, width: int, height: int):
    """The product fitted into the target size (RGBA, straight colours) and its keep alpha.

    The product is letterboxed (aspect kept, never cropped); the padding is background to
    repaint. A mask of "alpha" keeps the product's own transparency; a drawn mask (white =
    repaint) keeps its inverse. Keep is None for image-to-image (nothing is pasted back).
    """
    from PIL import Image, ImageChops, ImageOps

    src = load_image(init)
    rgba = src.convert("RGBA")
    fitted = ImageOps.pad(rgba, (width, height), color=(0, 0, 0, 0), method=Image.Resampling.LANCZOS)
    if mask_uri is None:
        return fitted, None
    if mask_uri == "alpha":
        return fitted, fitted.getchannel("A")
    # A mask is drawn over the product photo: bring it to the photo's size, then fit it
    # exactly like the product; padding is repaint (white). Invisible pixels are never kept.
    user_mask = load_image(mask_uri).convert("L").resize(src.size, Image.Resampling.NEAREST)
    user_mask = ImageOps.pad(user_mask, (width, height), color=255, method=Image.Resampling.NEAREST)
    return fitted, ImageChops.multiply(ImageOps.invert(user_mask), fitted.getchannel("A"))


def pipeline_inputs(product, keep, canvas=None):
    """What the diffusion pipeline starts from: init image and mask (white = repaint, or None).

    Only fully kept pixels are kept as they are; everything else, soft edges included, is
    background to generate, so that `composite` can layer the product over it exactly once.
    The background starts as neutral grey, or as `canvas` (a refinement of a staged product
    starts from the earlier image's background).
    """
    from PIL import Image, ImageOps

    init = canvas.copy() if canvas is not None else Image.new("RGB", product.size, FILL)
    if keep is None:
        init.paste(product, mask=product.getchannel("A"))
        return init, None
    solid = keep.point(lambda v: 255 if v == 255 else 0)
    init.paste(product.convert("RGB"), mask=solid)
    return init, ImageOps.invert(solid)


def starting_images(cands: list[dict], mode: str, width: int, height: int) -> tuple[list, list]:
    """Per candidate of an image-to-image or inpainting batch: its product layers (fitted
    product, keep alpha) and the pipeline's (init image, mask). A refinement (`canvas`: its
    parent's image) starts from the earlier image: the whole of it for image-to-image; its
    background for inpainting, the product kept as staged."""
    refine = [c.get(CANVAS) for c in cands]
    layers = [prepare_inputs(canvas if canvas and mode == IMG2IMG else c["init_image"], c["mask"], width, height)
              for c, canvas in zip(cands, refine, strict=True)]
    inputs = [pipeline_inputs(product, keep, fitted_canvas(canvas, width, height)
                              if canvas and mode == INPAINT else None)
              for (product, keep), canvas in zip(layers, refine, strict=True)]
    return layers, inputs


def fitted_canvas(image: bytes, width: int, height: int):
    """An earlier output image as an RGB canvas of the target size (it is that size already)."""
    from PIL import Image, ImageOps

    return ImageOps.pad(load_image(image).convert("RGB"), (width, height), color=FILL,
                        method=Image.Resampling.LANCZOS)


def composite(generated: np.ndarray, product, keep) -> np.ndarray:
    """Layer the fitted product over the generated image, once: product·a + generated·(1−a).

    `product` holds straight (not premultiplied) colours, so opaque pixels come back exact and
    soft edges blend with the new background, not with the placeholder behind the product.
    """
    a = np.asarray(keep, dtype=np.float32)[..., None] / 255.0
    p = np.asarray(product.convert("RGB"), dtype=np.float32)
    return np.clip(np.rint(p * a + generated.astype(np.float32) * (1 - a)), 0, 255).astype(np.uint8)
