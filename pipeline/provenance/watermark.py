"""An invisible watermark bound to the C2PA manifest (a soft binding): platforms strip metadata
when they re-encode, the pixels keep the watermark, and `identify` finds the asset's record from it.

The payload is the first bits of the item id (as many as the method carries): an item id is a
hash, so payloads spread evenly and the results table is the lookup index. The transform is
`invisible-watermark`'s (offline, in its wheel), never hand-written. A method is one entry of
METHODS; another library (Adobe's TrustMark, where its weights can be had) is one more entry.

A payload read back matches the one written when at most `max_bit_errors` bits differ: one rule
for the write stage's read-back, `verify` and `identify`. A resized copy is read at each size an
output wrote with the copy's aspect (`decode_at`): the DWT-DCT grid survives only at its own scale.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from pipeline.spec.limits import CHOICES, watermarkable


@dataclass(frozen=True)
class Method:
    """A watermarking method: its name in the job spec, the payload bits it carries, the library's
    name for it and the soft binding's `alg` (vendor-prefixed: not in the C2PA algorithm list)."""

    name: str
    bits: int
    library_method: str
    # the library's strength per YUV channel: the chroma (U) only, at 64 (its default 36 gave
    # way to JPEG 50 and WebP; luma costs 10 dB of PSNR): bench/watermark.py
    scales: tuple[int, int, int] = (0, 64, 0)

    @property
    def alg(self) -> str:
        return f"com.asset-pipeline.imwatermark.{self.name}.{self.bits}"

    @property
    def configs(self) -> dict:
        return {"scales": list(self.scales)} if self.scales else {}

    @property
    def max_bit_errors(self) -> int:
        """Bit errors a read may have and still match: 8 of 64 leaves a random payload a ~3e-10
        chance per indexed image to pass for it (bench/watermark.py measures the error rates)."""
        return self.bits // 8


# [watermark].method's names (the default first, chosen by bench/watermark.py's figures:
# bench/RESULTS.md, "Watermark"), each the library's transform of that name, 64 bits.
METHODS = {name: Method(name, 64, name) for name in CHOICES["watermark_method"]}


def too_small(width: int, height: int) -> bool:
    """Whether an image has too few pixels for the watermark (the library refuses it)."""
    return not watermarkable(width, height)


def payload_for(item_id: str, method: Method) -> str:
    """The payload of an item, as hex: the first `method.bits` bits of its id."""
    return item_id[: method.bits // 4]


def embed(rgb: np.ndarray, method: Method, payload: str) -> np.ndarray:
    """`rgb` (H×W×3 uint8) with `payload` (hex) watermarked into it."""
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bytes", bytes.fromhex(payload))
    bgr = encoder.encode(np.ascontiguousarray(rgb[:, :, ::-1]), method.library_method, **method.configs)
    return np.ascontiguousarray(bgr[:, :, ::-1])


def decode(rgb: np.ndarray, method: Method) -> str:
    """The payload (hex) read from `rgb` (H×W×3 uint8), errors and all."""
    from imwatermark import WatermarkDecoder

    decoder = WatermarkDecoder("bytes", method.bits)
    return decoder.decode(np.ascontiguousarray(rgb[:, :, ::-1]), method.library_method, **method.configs).hex()


def decode_at(rgb: np.ndarray, method: Method, sizes: Iterable[tuple[int, int]]) -> list[tuple[tuple[int, int], str]]:
    """The payload read from `rgb` as it is and scaled back to each of `sizes` (width, height)
    whose aspect is within 2% of its own: a platform's resized copy is read at its original scale."""
    from PIL import Image

    h, w = rgb.shape[:2]
    reads = [((w, h), decode(rgb, method))] if not too_small(w, h) else []
    for sw, sh in sorted(set(sizes)):
        if (sw, sh) != (w, h) and abs(sw / sh - w / h) <= 0.02 * (w / h) and not too_small(sw, sh):
            scaled = np.asarray(Image.fromarray(rgb).resize((sw, sh), Image.Resampling.BICUBIC))
            reads.append(((sw, sh), decode(scaled, method)))
    return reads


def bit_errors(a: str, b: str) -> int:
    """How many bits two payloads (hex, of one length) differ in."""
    return (int(a, 16) ^ int(b, 16)).bit_count()


def matches(read: str, written: str, method: Method) -> bool:
    """Whether a payload read back is the one written (the one rule)."""
    return len(read) == len(written) and bit_errors(read, written) <= method.max_bit_errors


def lost(data: bytes, method: Method, payload: str) -> str | None:
    """Why the watermark read from an encoded image file is not `payload`, or None when it is."""
    import io

    from PIL import Image

    read = decode(np.asarray(Image.open(io.BytesIO(data)).convert("RGB")), method)
    return None if matches(read, payload, method) else f"the watermark reads {read}, its soft binding says {payload}"


def self_test(method: Method) -> None:
    """Embed and read a payload in a small gradient, so a library that cannot load (OpenCV without
    libGL) or a method that loses its payload stops the job before any GPU work, not at every write."""
    from pipeline.errors import ConfigError

    side = np.linspace(40, 215, 256, dtype=np.float32)
    rgb = np.stack(np.broadcast_arrays(side[:, None], side[None, :], 128 + 0 * side[None, :]), -1).astype(np.uint8)
    payload = "a5" * (method.bits // 8)
    try:
        read = decode(embed(rgb, method, payload), method)
    except (ImportError, OSError, RuntimeError) as e:
        raise ConfigError(f"[watermark] method {method.name!r} cannot run here: {type(e).__name__}: {e}") from None
    if not matches(read, payload, method):
        raise ConfigError(f"[watermark] method {method.name!r} self-test: wrote {payload}, read {read}")
