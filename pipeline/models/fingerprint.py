"""What a model is, cheaply, without loading it: part of every item id, so a model copied to
another disk keeps its images and a changed one regenerates them.

Torch-free and fast (the plan runs it once): for a local folder, the contents of its small
config files plus, per weight file, its name, size and three sampled 64 KiB ranges (a retrained
checkpoint keeps names and sizes, not bytes); for a single weights file, the same sample; for
an embedded model, its recipe tag; for a hub id, the revision the job pins. Never what a cache
happens to hold: the driver's cache may differ from the actors', and a first run that fills it
must not change every item id of the second. Pin `[models].diffusion_revision` for hub models.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from pipeline.storage.paths import EMBEDDED_PREFIX, model_path

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".gguf", ".onnx")
CONFIG_MAX_BYTES = 1 << 20
SAMPLE = 1 << 16


def _sample(f: Path, h) -> None:
    """Size and three 64 KiB ranges (start, middle, end) of a weights file."""
    size = f.stat().st_size
    h.update(f"{size}\0".encode())
    with open(f, "rb") as fh:
        for offset in sorted({0, max(0, size // 2 - SAMPLE // 2), max(0, size - SAMPLE)}):
            fh.seek(offset)
            h.update(fh.read(SAMPLE))


def _file(f: Path, h) -> None:
    if f.name.endswith(WEIGHT_SUFFIXES) or f.stat().st_size > CONFIG_MAX_BYTES:
        _sample(f, h)
    else:
        h.update(f.read_bytes())


def _local(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    if path.is_file():
        _file(path, h)
        return f"file:{path.name}:{h.hexdigest()}"
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        h.update(f"{f.relative_to(path).as_posix()}\0".encode())
        _file(f, h)
    return "dir:" + h.hexdigest()


def fingerprint(spec: str | None, revision: str | None = None) -> str | None:
    """A model spec: `embedded:NAME`, a folder, a weights file, `clip-head:FILE`,
    `local-dir:FOLDER`, `hf-hub:ID` or a hub id / open_clip tag. Never raises: what cannot be
    read is named by its spec and revision (loading it reports the real problem)."""
    if not spec:
        return None
    if spec.startswith(EMBEDDED_PREFIX):
        from pipeline.models.embedded import VERSIONS, recipe_tag

        name = spec.removeprefix(EMBEDDED_PREFIX)
        if name in VERSIONS:
            return f"embedded:{name}@{recipe_tag(name)}"
    try:
        path = model_path(spec)
        if path.exists():
            return _local(path)
    except OSError:
        pass
    return f"id:{spec.removeprefix('hf-hub:')}@{revision or 'unpinned'}"
