"""What a model is, cheaply, without loading it: part of every item id, so a model copied to
another disk keeps its images and a changed one regenerates them.

Torch-free and fast (the plan runs it once): for a local folder, the contents of its small
config files plus the names and sizes of its weight files; for a single weights file, its name
and size; for an embedded model, its recipe tag; for a hub id, the revision asked for or the
commit of the cached snapshot.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from pipeline.config import EMBEDDED_PREFIX

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".ckpt", ".pt", ".pth", ".gguf", ".onnx")
CONFIG_MAX_BYTES = 1 << 20


def _folder(path: Path) -> str:
    h = hashlib.blake2b(digest_size=16)
    for f in sorted(p for p in path.rglob("*") if p.is_file() and ".cache" not in p.parts):
        rel = f.relative_to(path).as_posix()
        size = f.stat().st_size
        h.update(f"{rel}\0{size}\0".encode())
        if not f.name.endswith(WEIGHT_SUFFIXES) and size <= CONFIG_MAX_BYTES:
            h.update(f.read_bytes())
    return "dir:" + h.hexdigest()


def _hub(repo: str, revision: str | None) -> str:
    try:
        from huggingface_hub import try_to_load_from_cache

        for name in ("model_index.json", "config.json", "open_clip_config.json"):
            cached = try_to_load_from_cache(repo, name, revision=revision)
            if isinstance(cached, str):
                return f"hub:{repo}@{Path(cached).parent.name}"  # snapshots/<commit>/name
    except ImportError:
        pass
    return f"id:{repo}@{revision or 'unpinned'}"  # not cached here: the name is all we know


def fingerprint(spec: str | None, revision: str | None = None) -> str | None:
    """A model spec (`embedded:NAME`, a folder, a weights file, `clip-head:FILE`, a hub id)."""
    if not spec:
        return None
    if spec.startswith(EMBEDDED_PREFIX):
        from pipeline.models.embedded import recipe_tag

        name = spec.removeprefix(EMBEDDED_PREFIX)
        return f"embedded:{name}@{recipe_tag(name)}"
    path = Path(os.path.expanduser(spec.removeprefix("clip-head:")))
    if path.is_dir():
        return _folder(path)
    if path.is_file():
        return f"file:{path.name}:{path.stat().st_size}"
    return _hub(spec, revision)
