"""Encode pixels, write files atomically, hash bytes: the last CPU step before the disk.

A crash at any moment leaves either the old file or the new one under the final name,
never half of one: bytes go to a `.tmp-*` sibling, are fsynced, then `os.replace`d.
A `kill -9` mid-write can leave a `.tmp-*` file behind (nothing can clean up after it);
such files are never a result, and a resumed run rewrites the item.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
from pathlib import Path

import numpy as np

from pipeline.spec.limits import FORMATS
from pipeline.storage.layout import TEMP_PREFIX


def encode_image(
    pixels: np.ndarray,
    fmt: str,
    *,
    png_compress_level: int = 1,
    jpeg_quality: int = 92,
    webp_quality: int = 90,
) -> tuple[bytes, str]:
    """HxWx3 uint8 RGB → (encoded bytes, mime type). No metadata is written.

    PNG level 1 by default: level 9 is several times slower for a few percent smaller files.
    `webp_quality=100` means lossless WebP (lossy WebP at 100 still alters pixels).
    """
    from PIL import Image

    if pixels.dtype != np.uint8 or pixels.ndim != 3 or pixels.shape[2] != 3:
        raise ValueError(f"expected HxWx3 uint8 RGB pixels, got {pixels.dtype} {pixels.shape}")
    if fmt not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r} (known: {', '.join(FORMATS)})")
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="RGB")
    buffer = io.BytesIO()
    if fmt == "png":
        image.save(buffer, "PNG", compress_level=png_compress_level)
    elif fmt == "jpeg":
        image.save(buffer, "JPEG", quality=jpeg_quality)
    elif webp_quality >= 100:
        image.save(buffer, "WEBP", lossless=True)
    else:
        image.save(buffer, "WEBP", quality=webp_quality)
    return buffer.getvalue(), FORMATS[fmt].mime


def atomic_write(path: Path, data: bytes, before_replace=None) -> None:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.
    `before_replace` (tests) runs with the temp file complete and not yet renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(6)}")
    # os.open with 0o666 honours the umask, unlike mkstemp's fixed 0o600.
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace:
            before_replace()
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        raise
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power loss could otherwise undo it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_join(root: Path, relative: str) -> Path:
    """`root / relative`, resolved; ValueError if it would land outside `root`.

    Output paths come from manifest ids, so `..`, absolute paths and symlinks that
    point elsewhere must not let a row write outside the output folder.
    """
    if not relative or "\x00" in relative or Path(relative).is_absolute():
        raise ValueError(f"not a relative path inside the output folder: {relative!r}")
    base = Path(root).resolve()
    target = (base / relative).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"path {relative!r} escapes the output folder {base}")
    return target
