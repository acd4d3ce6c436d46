"""The one table of limits and vocabularies: what values the job spec, the manifest, the styles
table and a reviewer's decisions accept, and the words each rule is said in.

Every check imports its range from here (`LIMITS`), so the job spec, the manifest and the styles
table accept the same values and say so in the same words. Pure data: no I/O, no heavy imports.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

SEED_MAX = 2**63 - 1  # seeds are 63 bits: a given one at most this, a derived one masked to it


@dataclass(frozen=True)
class Limit:
    """An allowed range. The rule and its wording live together, so the job spec, the manifest and
    the styles table accept the same values and say so in the same words."""

    lo: float
    hi: float | None = None  # None: no upper bound
    lo_open: bool = False  # (lo, hi] rather than [lo, hi]
    multiple: int = 1

    def holds(self, x):
        """Whether `x` is within the limit: a number, or a polars expression (its rows), by one
        rule. NaN is never within (a polars NaN sorts above every number)."""
        ok = (x > self.lo) if self.lo_open else (x >= self.lo)
        if self.hi is not None:
            ok = ok & (x <= self.hi)
        return ok & (x % self.multiple == 0) if self.multiple > 1 else ok

    def allows(self, x: float) -> bool:
        return bool(self.holds(x))

    def __str__(self) -> str:
        if self.hi is None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"in ({_num(self.lo)}, {_num(self.hi)}]" if self.lo_open else f"{_num(self.lo)}..{_num(self.hi)}"
        return f"a multiple of {self.multiple} in {text}" if self.multiple > 1 else text


def _num(x: float) -> str:
    return "2^63-1" if x == SEED_MAX else f"{x:g}" if isinstance(x, float) else str(x)


# One table of limits for the job spec, the manifest and the styles table.
# Sizes: a multiple of 8 (the VAE of SD-class models downsamples by 8); 32 px is the smallest, since
# the tests and the design's tiny real models run at 32..64 px (the demo at 64); below that the latent
# is 1..3 cells, which no real model denoises into anything. 4096 bounds memory.
LIMITS = {
    "size": Limit(32, 4096, multiple=8),
    "steps": Limit(1, 1000),
    "num_candidates": Limit(1, 64),
    "keep": Limit(1, 64),
    "seed": Limit(0, SEED_MAX),
    "strength": Limit(0, 1, lo_open=True),
    "guidance_scale": Limit(0, 100),  # CFG past ~30 only saturates; 100 catches 750 typed for 7.5
    "lora_scale": Limit(0, 4),
    "style_image_scale": Limit(0, 2),  # IP-Adapter scale: 1 is the adapter's full strength
    "structure_scale": Limit(0, 2),  # controlnet_conditioning_scale
    "format_side": Limit(16, 8192),  # an exact channel size's sides ("728x90": a leaderboard banner)
    "logo_size": Limit(0, 0.5, lo_open=True),  # a logo's longer side, as a fraction of the image's shorter side
    "clip_threshold": Limit(0, 100),  # a CLIP score is 100 * max(cos, 0) (stages/score.py)
    "unsafe_threshold": Limit(0, 1),  # unsafe scores are probabilities (stages/moderate.py)
    # the job spec's own keys
    "fraction": Limit(0, 1),
    "at_least_one": Limit(1),
    "png_compress_level": Limit(0, 9),
    "quality": Limit(1, 100),
    "resources": Limit(0, lo_open=True),  # Ray GPUs / CPUs per actor: the runner divides by them
    "count": Limit(0),  # actors and threads; 0 = sized from the cluster
    "price": Limit(0),  # [cost].gpu_hour_usd
    "seconds": Limit(0, lo_open=True),  # [[cost.throughput]].seconds_per_image
    # Input files and objects, in bytes: one read whole into memory (a product photo, mask,
    # reference image, decisions file), a manifest or styles table (all its parts together), and
    # a file only hashed or fetched (LoRA weights). Only regular files and objects are read, and
    # never more than the limit, so a wrong path (/dev/zero, a pipe) cannot fill memory or hang.
    "image_bytes": Limit(0, 256 << 20),
    "table_bytes": Limit(0, 4 << 30),
    "weights_bytes": Limit(0, 16 << 30),
    "job_bytes": Limit(0, 1 << 20),  # a job file (TOML): far more than any job needs
}


def denoises(steps, strength):
    """Whether image-to-image or inpainting at `strength` runs any denoising step: diffusers runs
    int(steps × strength) of them. On numbers or on polars expressions alike."""
    return steps * strength >= 1


# invisible-watermark's smallest image (it refuses fewer pixels): with [watermark] on, every
# image a job delivers must have at least this many, or the row is refused at validation.
WATERMARK_MIN_PIXELS = 256 * 256


def watermarkable(width, height):
    """Whether an image of `width` × `height` can carry the watermark: on numbers or polars expressions."""
    return width * height >= WATERMARK_MIN_PIXELS


WATERMARK_TOO_SMALL = (f"too small for the watermark ([watermark] enabled): it needs "
                       f"{WATERMARK_MIN_PIXELS} pixels (256×256) or more")


class OutputFormat(NamedTuple):
    extension: str  # of the image file
    mime: str


# [output].format: each output format's file extension and MIME type.
FORMATS = {
    "png": OutputFormat("png", "image/png"),
    "jpeg": OutputFormat("jpg", "image/jpeg"),
    "webp": OutputFormat("webp", "image/webp"),
}
DTYPES = ("float32", "float16", "bfloat16")  # [models].dtype besides "auto": torch's names
CHOICES = {
    "format": tuple(FORMATS),
    "mode": ("demo", "files"),
    "dtype": ("auto", *DTYPES),
    # [formats]: where the source sits on a channel format's canvas (the margins go elsewhere),
    # and which images get formats (every written one, or only those a reviewer approved)
    "placement": ("center", "left", "right", "top", "bottom"),
    "formats_from": ("written", "approved"),
    # where a style's logo or headline sits in an image's safe area (a headline takes a band
    # across it: the vertical part counts)
    "position": ("top-left", "top", "top-right", "left", "center", "right", "bottom-left", "bottom", "bottom-right"),
    # [watermark].method: invisible-watermark's transforms (provenance/watermark.py); the first is the
    # default. Chosen by bench/watermark.py's figures: its plain dwtDct loses a 64-bit payload even
    # unattacked and is not offered; a method whose weights can be had here (TrustMark) is one more name.
    "watermark_method": ("dwtDctSvd",),
    # the signing algorithms c2pa-python signs with (c2pa.C2paSigningAlg), as [signer].algorithm names them
    "algorithm": ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"),
}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
