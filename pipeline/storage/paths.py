"""The one rule for what a value names: resolve it against a base, normalise it, confine it.

Every place the pipeline is told about comes through here, once: the inputs a manifest or
styles table names, the paths and model specs of the job spec, and the output root.
- A relative value joins its base (a folder, or a bucket prefix such as `s3://b/manifests`).
- A local path (plain, `~`, or `file://`) becomes an absolute real path: symlinks and `..` are
  followed, so confinement sees where the data really is.
- An object-store URI keeps its scheme, its key normalised (`a/../b` → `b`); a key that climbs
  out of its bucket, or a URI that names no bucket, is refused.
- A model spec is a name (`embedded:`, a hub id, an open_clip tag) or a path; `clip-head:` and
  `local-dir:` say that the rest is a local path.

`problem` confines a resolved input to the job's allowed schemes and roots; `confine` and
`confined` keep a relative output path inside the output root. Pure: no pipeline imports, no I/O
beyond looking up paths on local disk.
"""

from __future__ import annotations

import os
import posixpath
import re
from pathlib import Path

LOCAL = "file"
EMBEDDED_PREFIX = "embedded:"  # a tiny model built offline (pipeline/models/embedded.py)
HEAD_PREFIX = "clip-head:"  # a moderation head file over CLIP embeddings
LOCAL_DIR_PREFIX = "local-dir:"  # an open_clip model folder
PATH_PREFIXES = (HEAD_PREFIX, LOCAL_DIR_PREFIX)  # model specs whose rest is always a local path
# 'name:' before anything else (s3://, embedded:, hf-hub:); two letters at least, so not C:\.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def split(uri: str) -> tuple[str, str]:
    """(scheme, path): `file` and the path for local paths, the key part for the others."""
    if "://" not in uri:
        return LOCAL, uri
    scheme, rest = uri.split("://", 1)
    scheme = scheme.lower()
    if scheme == LOCAL and not rest.startswith("/"):
        host, _, path = rest.partition("/")
        if host != "localhost":
            raise ValueError(f"{uri!r} names a file on another host ({host!r})")
        rest = "/" + path
    return scheme, rest


def resolve(value: str, base: str | os.PathLike) -> str:
    """`value` resolved against `base` and normalised; ValueError when it names no place."""
    scheme, path = split(value)
    if scheme == LOCAL:
        path = os.path.expanduser(path)
        if os.path.isabs(path):
            return os.path.realpath(path)
        base_scheme, base_path = split(os.fspath(base))
        if base_scheme != LOCAL:
            return resolve(f"{base_scheme}://{base_path.rstrip('/')}/{path}", "")
        return os.path.realpath(os.path.join(base_path, path))
    bucket, _, key = path.partition("/")
    key = posixpath.normpath("/" + key).lstrip("/") if key else ""
    if not bucket or bucket in (".", "..") or _climbs(path):
        raise ValueError(f"{value!r} climbs out of its bucket or names none")
    return f"{scheme}://{bucket}/{key}" if key else f"{scheme}://{bucket}"


def _climbs(path: str) -> bool:
    """Whether a bucket/key path's `..` segments reach above the bucket."""
    depth = 0
    for part in path.split("/")[1:]:
        depth += -1 if part == ".." else (part not in ("", "."))
        if depth < 0:
            return True
    return False


def resolve_key(value: str, base: str | os.PathLike) -> str:
    """A job-spec path or URI, resolved as `resolve` does. The empty value, a model name and a
    value that names no place stay as written: checking them is for whoever reads them."""
    if not value or value.startswith(EMBEDDED_PREFIX):
        return value
    try:
        return resolve(value, base)
    except ValueError:
        return value


def _exists(path: str) -> bool:
    """Whether something is at `path`; a name the system cannot look up (too long) is not."""
    try:
        return os.path.exists(path)
    except (OSError, ValueError):
        return False


def resolve_model(value: str, base: str | os.PathLike) -> str:
    """A model spec with its local path resolved against `base`; names pass unchanged.

    'org/name' may be a hub id or a folder, so a relative spec is a path when it says so ('./',
    '../', '~') or when it exists under `base`; anything else (a hub id, an open_clip tag or
    architecture) is left for the loader, as are embedded: names and URIs.
    """
    prefix = next((p for p in PATH_PREFIXES if value.startswith(p)), None)
    if prefix:
        return prefix + resolve_key(value.removeprefix(prefix), base)
    if _SCHEME.match(value):
        return value
    says_path = value.startswith(("./", "../", "~")) or value in (".", "..")
    return resolve_key(value, base) if says_path or _exists(os.path.join(base, value)) else value


def model_path(spec: str) -> Path:
    """The local path a model spec would name: its path prefix dropped, `~` expanded."""
    for prefix in PATH_PREFIXES:
        spec = spec.removeprefix(prefix)
    return Path(os.path.expanduser(spec))


def parent(uri: str) -> str:
    """The folder (or prefix) a URI's relative neighbours resolve against."""
    scheme, path = split(uri)
    if scheme == LOCAL:
        return os.path.dirname(os.path.abspath(path))
    return f"{scheme}://{path.rsplit('/', 1)[0]}"


def inside(uri: str, root: str) -> bool:
    """Whether resolved `uri` is `root` or below it (a root is resolved like any URI)."""
    scheme, path = split(uri)
    try:
        root_scheme, root_path = split(resolve(root, os.getcwd()))
    except ValueError:  # a root that names nothing confines to nothing
        return False
    if scheme != root_scheme:
        return False
    root_path = root_path.rstrip("/")
    return path == root_path or path.startswith(root_path + "/")


def problem(uri: str, roots: tuple[str, ...], schemes: tuple[str, ...]) -> str | None:
    """Why a resolved input URI may not be read by this job, or None."""
    scheme, _ = split(uri)
    if scheme not in {s.lower() for s in schemes}:
        return (f"scheme {scheme!r} is not allowed (allowed: {', '.join(schemes)}; "
                "[job].allowed_input_schemes)")
    if roots and not any(inside(uri, r) for r in roots):
        return f"outside [job].allowed_input_roots: {uri} is under none of {', '.join(roots)}"
    return None


def confine(relative: str) -> str:
    """`relative` normalised (`/` separators, `a/./b` → `a/b`), once it is known to stay below
    whatever root it joins: ValueError for the empty path, a NUL byte, an absolute path, the
    root itself, or `..` reaching above it. The one check for every path inside the output."""
    norm = posixpath.normpath(relative.replace("\\", "/")) if relative else ""
    if (not relative or "\x00" in relative or norm.startswith("/") or norm in (".", "..")
            or norm.startswith("../")):
        raise ValueError(f"not a relative path inside the output folder: {relative!r}")
    return norm


def confined(root: str | os.PathLike, relative: str) -> Path:
    """`root / relative` on local disk, resolved: `confine`d first, then ValueError when a
    symlink on the way leads outside `root`."""
    base = Path(root).resolve()
    target = (base / confine(relative)).resolve()
    if target == base or not target.is_relative_to(base):
        raise ValueError(f"path {relative!r} escapes the output folder {base}")
    return target
