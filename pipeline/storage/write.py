"""The bytes of a file and how they reach local disk: encode pixels, hash bytes, and the one
atomic write that every local file and folder of the pipeline goes through.

A crash at any moment leaves either the old file (or nothing) or the whole new one under the
final name, never part of one. The one mechanism, for a file (`atomic_write`, `staged_file`):
a `.tmp-*` sibling in the same folder is written, fsynced, renamed over the final name, and the
folder is fsynced; an exclusive write links the temp file to the final name instead, which
fails when something is there. For a folder (`atomic_folder`): built in a `.tmp-*` sibling, its
files and itself fsynced, renamed into place, its parent fsynced; a folder that is there is
whole and is never replaced.

fsync policy: every file is fsynced before its rename and every folder whose entries a rename
changed is fsynced after it, so after a power loss the name holds the old content or the new,
never an empty or torn file. Nothing else is fsynced. A `kill -9` mid-write can leave a `.tmp-*`
file or folder behind (nothing can clean up after it); such names are never a result, and
`pipeline.run.compact.remove_temp` removes them when a run starts.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import secrets
import shutil
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


def _temp_beside(path: Path) -> Path:
    return path.with_name(f"{TEMP_PREFIX}{path.name}-{secrets.token_hex(6)}")


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _commit(temp: Path, path: Path, exclusive: bool) -> bool:
    """Move the fsynced `temp` to `path` (replacing it, or only when nothing is there): whether
    it moved. The parent is fsynced so the new name survives a power loss."""
    if exclusive:
        try:
            os.link(temp, path)
        except FileExistsError:
            return False
        finally:
            temp.unlink(missing_ok=True)
    else:
        os.replace(temp, path)
    fsync_dir(path.parent)
    return True


@contextlib.contextmanager
def staged_file(path: str | os.PathLike, before_commit=None, exclusive: bool = False, mode: int = 0o666):
    """A temp file beside `path` to write into (a path, for writers that open files themselves);
    when the block ends without an error it is fsynced and becomes `path`, whole. On any error,
    or when `before_commit` raises (a lock check, a test's kill point), `path` is left as it was
    and the temp file removed. `exclusive`: only when nothing is at `path` (the block's result
    then says nothing; use `atomic_write` to learn whether it was made). `mode` honours the umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(path)
    os.close(os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode))  # not mkstemp: its 0o600
    try:
        yield temp
        _fsync_file(temp)
        if before_commit:
            before_commit()
        _commit(temp, path, exclusive)
    finally:
        temp.unlink(missing_ok=True)


def atomic_write(path: str | os.PathLike, data: bytes, before_replace=None, exclusive: bool = False,
                 mode: int = 0o666) -> bool:
    """Write `data` to `path` so readers see the old file or the whole new one, never a part.
    `exclusive`: only when nothing is at `path`. Whether `path` now holds `data` from this call.
    `before_replace` (tests) runs with the temp file complete and not yet renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(path)
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if before_replace:
            before_replace()
        return _commit(temp, path, exclusive)
    finally:
        temp.unlink(missing_ok=True)


def atomic_folder(path: str | os.PathLike, fill, mode: int = 0o755) -> bool:
    """The folder `path` (permissions `mode`), made whole: `fill(folder)` writes into a temp
    sibling, which is fsynced and renamed into place. Whether this call made it: False when a folder was already
    there (another process won the race: its folder stands, this one is dropped). An error in
    `fill` leaves nothing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temp = _temp_beside(path)
    temp.mkdir()
    temp.chmod(mode)  # as asked, whatever the umask: a shared cache stays readable, a key's folder private
    try:
        fill(temp)
        for folder, _, names in os.walk(temp):
            for name in names:
                _fsync_file(Path(folder, name))
            fsync_dir(Path(folder))
        try:
            os.rename(temp, path)
        except OSError:
            if not path.is_dir():  # not a lost race: a real failure
                raise
            return False
        fsync_dir(path.parent)
        return True
    finally:
        shutil.rmtree(temp, ignore_errors=True)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable (a power loss could otherwise undo it)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
