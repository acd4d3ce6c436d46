"""Writes the demo manifest, styles table, product photos and brand logo (deterministic;
committed outputs). The headline font, brand/DejaVuSans-Bold-Latin.ttf, is committed as it is
(brand/FONT-LICENSE.txt says how it was made).

    python manifests/make_demo.py
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from PIL import Image, ImageDraw

HERE = Path(__file__).resolve().parent


def product_mug(path: Path, size: int = 256) -> None:
    """A product cut-out: an opaque mug on a transparent background (RGBA)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.rounded_rectangle((70, 60, 170, 200), radius=14, fill=(200, 40, 40, 255))
    d.ellipse((150, 95, 205, 160), outline=(200, 40, 40, 255), width=12)
    d.rectangle((85, 90, 155, 110), fill=(250, 250, 250, 255))
    im.save(path)


def product_bottle(path: Path, mask_path: Path, size: int = 192) -> None:
    """An opaque product photo (RGB) plus a separate mask: white = background to repaint."""
    rng = np.random.default_rng(7)
    base = np.full((size, size, 3), 235, np.uint8) + rng.integers(0, 10, (size, size, 3), dtype=np.uint8)
    im = Image.fromarray(base)
    d = ImageDraw.Draw(im)
    d.rectangle((80, 40, 112, 170), fill=(30, 90, 160))
    d.rectangle((88, 20, 104, 40), fill=(20, 20, 20))
    im.save(path)
    mask = Image.new("L", (size, size), 255)
    ImageDraw.Draw(mask).rectangle((80, 20, 112, 170), fill=0)
    mask.save(mask_path)


def brand_logo(path: Path, size: int = 96) -> None:
    """The brand's mark: a white roundel with an orange wedge on a transparent background (RGBA)."""
    im = Image.new("RGBA", (size, size), (0, 0, 0, 0))
    d = ImageDraw.Draw(im)
    d.ellipse((4, 4, size - 4, size - 4), fill=(255, 255, 255, 235))
    d.pieslice((18, 18, size - 18, size - 18), 200, 340, fill=(240, 120, 20, 255))
    im.save(path)


def main() -> None:
    products = HERE / "products"
    products.mkdir(exist_ok=True)
    product_mug(products / "mug.png")
    product_bottle(products / "bottle.jpg", products / "bottle_mask.png")
    brand_logo(HERE / "brand" / "logo.png")
    manifest = pa.table({
        "id": ["hero-001", "hero-002", "hero-003", "lifestyle-ja-01", "stage-mug-01", "stage-bottle-01"],
        "prompt": [
            "a ceramic coffee mug with a minimalist logo",
            "running shoes, bright colours, dynamic angle",
            "a leather handbag, autumn collection",
            "朝の光の中のコーヒーカップ",
            "a red mug",
            "a blue water bottle",
        ],
        "style": ["studio", "studio", "lifestyle", "lifestyle", "staging", "staging"],
        "seed": pa.array([None, 42, None, 7, None, None], pa.int64()),
        "product_image": [None, None, None, None, "products/mug.png", "products/bottle.jpg"],
        "mask": [None, None, None, None, None, "products/bottle_mask.png"],
        "sku": ["MUG-100", "SHOE-220", "BAG-310", "MUG-100", "MUG-100", "BOT-500"],
        "campaign": ["spring", "spring", "autumn", "jp-launch", "spring", "summer"],
        # drawn by styles with a headline_font (studio): a brand overlay after judgement
        "headline": ["Spring sale: 20% off", "Run further", None, None, None, None],
    })
    pq.write_table(manifest, HERE / "demo.parquet")
    styles = pa.table({
        "style": ["studio", "lifestyle", "staging"],
        "prompt_template": ["{prompt}, studio product photo, soft light, white background",
                            "{prompt}, lifestyle photo, warm natural light",
                            "{prompt} on a marble kitchen counter, morning light"],
        "negative_prompt": ["blurry, text, watermark", "blurry, low quality", "blurry, distorted product"],
        "steps": pa.array([4, 4, 4], pa.int64()),
        "guidance_scale": [5.0, 4.0, 6.0],
        "seeds": pa.array([[101, 202], None, None], pa.list_(pa.int64())),
        "strength": [None, None, 0.9],
        # the studio style's brand overlay: its logo and the rows' headlines
        "logo": ["brand/logo.png", None, None],
        "logo_position": ["bottom-right", None, None],
        "headline_font": ["brand/DejaVuSans-Bold-Latin.ttf", None, None],
        "headline_color": ["#FFFFFF", None, None],
    })
    pq.write_table(styles, HERE / "styles.parquet")
    print(f"wrote {HERE / 'demo.parquet'}, {HERE / 'styles.parquet'}, {products} and {HERE / 'brand' / 'logo.png'}")


if __name__ == "__main__":
    main()
