"""Encode, atomic write and hash (pipeline/storage/write.py); safe paths (pipeline/storage/paths.py)."""

from __future__ import annotations

import hashlib
import io
import os

import numpy as np
import pytest
from PIL import Image

from pipeline.storage.paths import confined
from pipeline.storage.write import atomic_folder, atomic_write, encode_image, sha256_hex, staged_file


@pytest.fixture
def pixels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (24, 40, 3), dtype=np.uint8)


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.mark.parametrize(
    ("fmt", "kwargs", "mime", "exact"),
    [
        ("png", {}, "image/png", True),
        ("png", {"png_compress_level": 9}, "image/png", True),
        ("webp", {"webp_quality": 100}, "image/webp", True),  # 100 = lossless
        ("webp", {"webp_quality": 80}, "image/webp", False),
        ("jpeg", {"jpeg_quality": 95}, "image/jpeg", False),
    ],
)
def test_encode_round_trips(pixels, fmt, kwargs, mime, exact):
    data, got_mime = encode_image(pixels, fmt, **kwargs)
    assert got_mime == mime
    back = decode(data)
    assert back.shape == pixels.shape and back.dtype == np.uint8
    if exact:
        np.testing.assert_array_equal(back, pixels)


def test_encode_rejects_bad_input(pixels):
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_image(pixels.astype(np.float32), "png")
    with pytest.raises(ValueError, match="HxWx3 uint8"):
        encode_image(pixels[..., :2], "png")
    with pytest.raises(ValueError, match="unknown image format"):
        encode_image(pixels, "gif")


def test_sha256_hex():
    assert sha256_hex(b"abc") == hashlib.sha256(b"abc").hexdigest()


def test_atomic_write_creates_parents_and_leaves_no_temp(tmp_path):
    target = tmp_path / "a" / "b" / "img.png"
    atomic_write(target, b"first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert os.listdir(target.parent) == ["img.png"]


def test_failed_write_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    def boom(fd):
        raise OSError("disk on fire")

    target = tmp_path / "img.png"
    monkeypatch.setattr(os, "fsync", boom)  # fails after the bytes went to the temp file
    with pytest.raises(OSError, match="disk on fire"):
        atomic_write(target, b"data")
    assert os.listdir(tmp_path) == []


def test_failed_overwrite_keeps_the_old_file(tmp_path, monkeypatch):
    target = tmp_path / "img.png"
    atomic_write(target, b"old")

    def boom(src, dst):
        raise KeyboardInterrupt  # killed between write and rename

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(KeyboardInterrupt):
        atomic_write(target, b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["img.png"]


def test_safe_join_accepts_paths_inside(tmp_path):
    assert confined(tmp_path, "a/b.png") == tmp_path.resolve() / "a" / "b.png"
    assert confined(tmp_path, "a/../b.png") == tmp_path.resolve() / "b.png"


@pytest.mark.parametrize("relative", ["../x", "/etc/passwd", "a/../../x", "", ".", "a\x00b"])
def test_safe_join_rejects_escapes(tmp_path, relative):
    with pytest.raises(ValueError):
        confined(tmp_path / "out", relative)


def test_safe_join_rejects_symlink_escape(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir()
    outside.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(ValueError, match="escapes"):
        confined(root, "link/img.png")


def test_an_exclusive_write_never_replaces_what_is_there(tmp_path):
    target = tmp_path / "lock.json"
    assert atomic_write(target, b"first", exclusive=True) is True
    assert atomic_write(target, b"second", exclusive=True) is False
    assert target.read_bytes() == b"first" and os.listdir(tmp_path) == ["lock.json"]


def test_a_staged_file_becomes_the_target_only_when_the_block_ends_well(tmp_path):
    target = tmp_path / "big.parquet"
    with pytest.raises(RuntimeError), staged_file(target) as temp:
        temp.write_bytes(b"half")
        raise RuntimeError("writer died")
    assert os.listdir(tmp_path) == []

    def lost_the_lock():
        raise PermissionError("lock lost")

    with pytest.raises(PermissionError), staged_file(target, before_commit=lost_the_lock) as temp:
        temp.write_bytes(b"whole")
    assert os.listdir(tmp_path) == []
    with staged_file(target) as temp:
        temp.write_bytes(b"whole")
    assert target.read_bytes() == b"whole" and os.listdir(tmp_path) == ["big.parquet"]


def test_a_folder_is_made_whole_or_not_at_all(tmp_path):
    target = tmp_path / "model"

    def half(folder):
        (folder / "config.json").write_text("{}")
        raise OSError("disk full half-way")

    with pytest.raises(OSError, match="half-way"):
        atomic_folder(target, half)
    assert os.listdir(tmp_path) == []  # neither the folder nor its temp sibling
    assert atomic_folder(target, lambda f: (f / "weights").write_bytes(b"w")) is True
    assert atomic_folder(target, lambda f: (f / "other").write_bytes(b"o")) is False  # the first one stands
    assert os.listdir(target) == ["weights"] and os.listdir(tmp_path) == ["model"]
    private = tmp_path / "keys"
    atomic_folder(private, lambda f: None, mode=0o700)
    assert private.stat().st_mode & 0o777 == 0o700 and (target.stat().st_mode & 0o777) == 0o755
