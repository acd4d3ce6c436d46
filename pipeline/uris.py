"""The one way to name input data: resolve against a base, normalise, confine, fingerprint.

Every input URI (product photos, masks, reference images, LoRA files) goes through `resolve`
once, so what validation checks is exactly what the actors read:
- a relative value joins its base (a folder, or a bucket prefix such as `s3://b/manifests`);
- a local path (plain or `file://`) becomes an absolute real path: symlinks and `..` are
  followed, so confinement sees where the data really is;
- an object-store URI keeps its scheme, its key normalised (`a/../b` → `b`).

`problem` confines a resolved URI to the job's allowed schemes and roots (a root may be a
bucket prefix). `fingerprint` names the content, not the place, for item ids.
"""

from __future__ import annotations

import hashlib
import os
import posixpath

LOCAL = "file"
CHUNK = 1 << 20


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


def resolve(value: str, base: str) -> str:
    """A URI from a manifest or styles table, resolved against `base` and normalised."""
    scheme, path = split(value)
    if scheme == LOCAL:
        path = os.path.expanduser(path)
        if os.path.isabs(path):
            return os.path.realpath(path)
        base_scheme, base_path = split(base)
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


class StorageError(RuntimeError):
    """A storage scheme this installation cannot reach (its fsspec driver is missing)."""


# The fsspec driver each object store needs, and how to get it.
DRIVERS = {"s3": "s3fs (a dependency: reinstall the package)", "gs": "gcsfs: pip install 'asset-pipeline[gcs]'",
           "gcs": "gcsfs: pip install 'asset-pipeline[gcs]'", "az": "adlfs: pip install adlfs",
           "abfs": "adlfs: pip install adlfs"}


def filesystem(uri: str):
    """The fsspec filesystem and path of a URI; StorageError naming the package to install when
    its driver is missing."""
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as e:
        scheme = split(uri)[0]
        raise StorageError(f"{uri}: {scheme}:// needs {DRIVERS.get(scheme, f'an fsspec driver ({e})')}") from None


def read_bytes(uri: str) -> bytes:
    scheme, path = split(uri)
    if scheme == LOCAL:
        with open(path, "rb") as f:
            return f.read()
    fs, path = filesystem(uri)
    return fs.cat_file(path)


def content_digest(data: bytes) -> str:
    return "b2:" + hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint(uri: str) -> str:
    """What the content is, not where it lives: a hash of a local file's bytes; for an object
    store, the fingerprint it already keeps (ETag, MD5, version or generation) and the size,
    so a million-object catalogue needs a listing, not a million downloads."""
    scheme, path = split(uri)
    if scheme == LOCAL:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return "b2:" + h.hexdigest()
    fs, path = filesystem(uri)
    info = fs.info(path)
    for key in ("ETag", "etag", "md5Hash", "content_md5", "VersionId", "generation"):
        if info.get(key):
            return f"{key.lower()}:{str(info[key]).strip(chr(34))}:{info.get('size')}"
    return content_digest(read_bytes(uri))


def cache_root() -> str:
    """Where this node keeps local copies of remote inputs (`$ASSET_PIPELINE_CACHE`)."""
    return os.environ.get("ASSET_PIPELINE_CACHE") or os.path.join(
        os.path.expanduser("~"), ".cache", "asset-pipeline", "inputs")


def local_copy(uri: str) -> str:
    """A local path holding `uri`'s bytes, for libraries that only open local files (LoRA
    loading). Local paths are returned as they are; a remote object is fetched once per node
    into a cache folder named by its fingerprint, so a changed object is fetched again."""
    scheme, path = split(uri)
    if scheme == LOCAL:
        return path
    key = hashlib.blake2b(fingerprint(uri).encode(), digest_size=16).hexdigest()
    target = os.path.join(cache_root(), key, posixpath.basename(path))
    if not os.path.isfile(target):
        os.makedirs(os.path.dirname(target), exist_ok=True)
        temp = f"{target}.part-{os.getpid()}"
        fs, remote = filesystem(uri)
        fs.get_file(remote, temp)
        os.replace(temp, target)  # whole or absent: a racing fetch on the same node is harmless
    return target
