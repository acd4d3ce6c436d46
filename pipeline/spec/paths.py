"""Paths and model specs in a job file, resolved against the job file's own folder.

A job runs the same from any working directory. A model spec counts as a path when it starts
with `./`, `../` or `~`, or names something beside the job file; hub ids, `embedded:` names and
URIs pass unchanged.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

EMBEDDED_PREFIX = "embedded:"
# Model specs whose rest is always a local path (a moderation head file, an open_clip folder).
_PATH_PREFIXES = ("clip-head:", "local-dir:")
# 'name:' before anything else (s3://, embedded:, hf-hub:); two letters at least, so not C:\.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def _is_local_path(value: str) -> bool:
    return "://" not in value and not value.startswith(EMBEDDED_PREFIX)


def is_file(path: Path) -> bool:
    """Whether `path` is a file; a name the system cannot look up (too long) is not."""
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    """Whether something is at `path`; a name the system cannot look up (too long) is not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_path(value: str, base: Path) -> str:
    """A relative local path resolved against `base`; URIs and absolute paths unchanged."""
    if not value or not _is_local_path(value):
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_model(value: str, base: Path) -> str:
    """A model spec with its local path resolved against `base`; names pass unchanged.

    'org/name' may be a hub id or a folder, so a relative spec is a path when it says so ('./',
    '../', '~') or when it exists under `base`; anything else (a hub id, an open_clip tag or
    architecture) is left for the loader, as are embedded: names and URIs.
    """
    prefix = next((p for p in _PATH_PREFIXES if value.startswith(p)), None)
    if prefix:
        return prefix + resolve_path(value.removeprefix(prefix), base)
    if _SCHEME.match(value):
        return value
    says_path = value.startswith(("./", "../", "~")) or value in (".", "..")
    return resolve_path(value, base) if says_path or _exists(base / value) else value
