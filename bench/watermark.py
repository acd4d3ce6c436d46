"""How well the watermark survives what platforms do to an image, and what it costs.

For each method (the pipeline's METHODS, and the wheel's RivaGAN for comparison where
onnxruntime is installed), on natural photos (scikit-image's bundled test photos, read out of its
wheel; synthetic photos where it cannot be downloaded): bit accuracy and identification rate
(`watermark.matches`, the pipeline's own rule) after JPEG 90/75/50, resizing to 75%/50% (read
back at the original size, as `identify` does from the output's sizes), a 10% crop, a PNG → WebP
round trip, and JPEG 75 of a 75% copy (the identify test's case); PSNR of the watermarked image
against the original; ms to embed and to read.

    python -m bench.watermark [--size 512] [--images 8] [--json out.json]
"""

from __future__ import annotations

import argparse
import io
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from bench.common import ROOT, emit, machine, table
from pipeline.provenance import watermark as wm

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "motorcycle_left", "retina", "immunohistochemistry", "color",
          "hubble_deep_field", "logo")


def photos(n: int, size: int) -> list[np.ndarray]:
    """`n` natural photos, centre-cropped square and resized to `size`."""
    cache = ROOT / "out" / "bench" / "photos"
    wheel = next(iter(sorted(cache.glob("scikit_image-*.whl"))), None)
    if wheel is None:
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                        "-d", str(cache), "scikit-image"], check=False)
        wheel = next(iter(sorted(cache.glob("scikit_image-*.whl"))), None)
    found = []
    if wheel is not None:
        with zipfile.ZipFile(wheel) as z:
            names = [n_ for n_ in z.namelist() if n_.startswith("skimage/data/")
                     and Path(n_).stem in PHOTOS and n_.endswith((".png", ".jpg"))]
            for name in sorted(names):
                img = Image.open(io.BytesIO(z.read(name))).convert("RGB")
                side = min(img.size)
                left, top = (img.width - side) // 2, (img.height - side) // 2
                found.append(np.asarray(img.crop((left, top, left + side, top + side)).resize((size, size))))
    rng = np.random.default_rng(0)
    while len(found) < n:  # synthetic: smooth colour fields with a little grain
        small = (rng.random((size // 32, size // 32, 3)) * 255).astype(np.uint8)
        smooth = np.asarray(Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)
        found.append(np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8))
    return found[:n]


def _codec(rgb: np.ndarray, fmt: str, **kw) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, fmt, **kw)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def _resize(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    return np.asarray(Image.fromarray(rgb).resize((round(w * f), round(h * f)), Image.Resampling.LANCZOS))


def _crop(rgb: np.ndarray, f: float) -> np.ndarray:
    h, w = rgb.shape[:2]
    dy, dx = round(h * f / 2), round(w * f / 2)
    return rgb[dy:h - dy, dx:w - dx]


ATTACKS = {
    "none": lambda x: x,
    "jpeg90": lambda x: _codec(x, "JPEG", quality=90),
    "jpeg75": lambda x: _codec(x, "JPEG", quality=75),
    "jpeg50": lambda x: _codec(x, "JPEG", quality=50),
    "resize75": lambda x: _resize(x, 0.75),
    "resize50": lambda x: _resize(x, 0.5),
    "crop10": lambda x: _crop(x, 0.1),
    "webp": lambda x: _codec(x, "WEBP", quality=80),
    "resize75+jpeg75": lambda x: _codec(_resize(x, 0.75), "JPEG", quality=75),
}


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255 ** 2 / mse)


def measure(method: wm.Method, images: list[np.ndarray], rng: np.random.Generator) -> dict:
    """Per attack: mean bit accuracy, identification rate; and the method's PSNR and timings."""
    acc = {a: [] for a in ATTACKS}
    found = {a: [] for a in ATTACKS}
    psnrs, embed_ms, read_ms = [], [], []
    for img in images:
        payload = rng.bytes(method.bits // 8).hex()
        t0 = time.perf_counter()
        marked = wm.embed(img, method, payload)
        embed_ms.append((time.perf_counter() - t0) * 1000)
        psnrs.append(psnr(img, marked))
        size = (img.shape[1], img.shape[0])
        for name, attack in ATTACKS.items():
            t0 = time.perf_counter()
            reads = wm.decode_at(attack(marked), method, [size])
            read_ms.append((time.perf_counter() - t0) * 1000)
            best = min((wm.bit_errors(r, payload) for _, r in reads), default=method.bits)
            acc[name].append(1 - best / method.bits)
            found[name].append(best <= method.max_bit_errors)
    return {"alg": method.alg, "bits": method.bits, "max_bit_errors": method.max_bit_errors,
            "psnr_db": float(np.mean(psnrs)), "psnr_min_db": float(np.min(psnrs)),
            "embed_ms": float(np.median(embed_ms)), "read_ms": float(np.median(read_ms)),
            "bit_accuracy": {a: float(np.mean(v)) for a, v in acc.items()},
            "identified": {a: float(np.mean(v)) for a, v in found.items()}}


def methods() -> list[wm.Method]:
    found = [*wm.METHODS.values(),
             wm.Method("dwtDctSvd", 64, "dwtDctSvd", (0, 36, 0)),  # the library's own strength
             wm.Method("dwtDct", 64, "dwtDct")]  # the library's default transform (not offered: see RESULTS.md)
    try:  # the wheel's learned method, for comparison: it needs onnxruntime and carries 32 bits
        from imwatermark import WatermarkEncoder

        WatermarkEncoder.loadModel()
        found.append(wm.Method("rivaGan", 32, "rivaGan", ()))
    except ImportError:
        print("(rivaGan skipped: onnxruntime is not installed)", file=sys.stderr)
    return found


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--json")
    args = ap.parse_args(argv)
    images = photos(args.images, args.size)
    result = {"bench": "watermark", "machine": machine(), "size": args.size, "images": len(images),
              "methods": {}}
    for method in methods():
        m = measure(method, images, np.random.default_rng(1))
        result["methods"][f"{method.name}/{method.bits}/{'-'.join(map(str, method.scales)) or 'learned'}"] = m
        rows = [("PSNR dB (mean, min)", f"{m['psnr_db']:.1f}, {m['psnr_min_db']:.1f}"),
                ("embed / read ms", f"{m['embed_ms']:.0f} / {m['read_ms']:.0f}")]
        rows += [(f"{a}: bit acc / identified", f"{m['bit_accuracy'][a]:.3f} / {m['identified'][a]:.2f}")
                 for a in ATTACKS]
        title = f"{method.name}, {method.bits} bits, scales {method.scales}, {len(images)} photos at {args.size}px"
        print(table(rows, title))
    emit(result, "watermark", args.json)
    return result


if __name__ == "__main__":
    with tempfile.TemporaryDirectory():
        main()
