"""The one way to name input data: resolve against a base, normalise, confine, fingerprint.

Every input URI (product photos, masks, reference images, LoRA files) goes through `resolve`
once, so what validation checks is exactly what the actors read:
- a relative value joins its base (a folder, or a bucket prefix such as `s3://b/manifests`);
- a local path (plain or `file://`) becomes an absolute real path: symlinks and `..` are
  followed, so confinement sees where the data really is;
- an object-store URI keeps its scheme, its key normalised (`a/../b` → `b`).

`problem` confines a resolved URI to the job's allowed schemes and roots (a root may be a
bucket prefix). `fingerprint` names the content, not the place, for item ids.

Every input is read through `open_input`: only a regular file or an object, no larger than its
limit in the one table of limits (`pipeline.spec.config.LIMITS`), and never more than that limit is
read, so a wrong path (/dev/zero, /dev/null, a named pipe, a folder) is refused by name instead
of filling memory or hanging. `load_image` is the one way an input image's pixels are read.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from typing import BinaryIO

from pipeline.errors import Refused, StorageError
from pipeline.spec.config import LIMITS

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


# The fsspec driver each object store needs, and how to get it.
DRIVERS = {"s3": "s3fs (a dependency: reinstall the package)", "gs": "gcsfs: pip install 'asset-pipeline[gcs]'",
           "gcs": "gcsfs: pip install 'asset-pipeline[gcs]'", "az": "adlfs: pip install adlfs",
           "abfs": "adlfs: pip install adlfs"}


def filesystem(uri: str):
    """The fsspec filesystem and path of a URI; StorageError naming the package to install when
    its driver is missing, or saying that no storage has this scheme."""
    import fsspec

    scheme = split(uri)[0]
    if scheme not in fsspec.available_protocols():
        raise StorageError(f"{uri}: no storage is known by the scheme {scheme + '://'!r}")
    try:
        return fsspec.core.url_to_fs(uri)
    except ImportError as e:
        raise StorageError(f"{uri}: {scheme}:// needs {DRIVERS.get(scheme, f'an fsspec driver ({e})')}") from None


IMAGE, TABLE, WEIGHTS = "image_bytes", "table_bytes", "weights_bytes"  # keys of LIMITS


def _size(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:g} {unit}" if unit != "bytes" else f"{int(n)} bytes"
        n /= 1024
    raise AssertionError


def _kind(mode: int) -> str | None:
    """What a local path is, when it is not a regular file."""
    for test, name in ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe"),
                       (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket")):
        if test(mode):
            return name
    return None if stat.S_ISREG(mode) else "not a file"


def within_limit(uri: str, size: int, limit: str) -> int:
    """`size`, or Refused when it is over `LIMITS[limit]` (the one rule for every input's size)."""
    most = int(LIMITS[limit].hi)
    if size > most:
        raise Refused(f"{uri} is {_size(size)}, larger than the limit of {_size(most)} for an input ({limit})")
    return size


def checked_size(uri: str, limit: str = IMAGE) -> int:
    """The size of the regular file or object `uri`, which is not opened: FileNotFoundError when
    absent, Refused when it is something else (a device, a pipe, a folder) or larger than
    `LIMITS[limit]`."""
    scheme, path = split(uri)
    if scheme == LOCAL:
        st = os.stat(path)
        if (kind := _kind(st.st_mode)) is not None:
            raise Refused(f"{uri} is {kind}, not a regular file")
        return within_limit(uri, st.st_size, limit)
    fs, key = filesystem(uri)
    return int(_object(uri, fs.info(key), limit).get("size") or 0)


def _object(uri: str, info: dict, limit: str) -> dict:
    """An object store's listing of `uri`, once it is known to be one object within the limit."""
    if info.get("type", "file") != "file":
        raise Refused(f"{uri} is a {info.get('type')}, not a file")
    within_limit(uri, int(info.get("size") or 0), limit)
    return info


def open_input(uri: str, limit: str = IMAGE) -> BinaryIO:
    """`uri` open for reading, once `checked_size` admits it. A local file is opened without
    blocking and checked again by its descriptor, so a pipe put in its place after the check
    cannot hang the read."""
    scheme, path = split(uri)
    checked_size(uri, limit)
    if scheme != LOCAL:
        fs, key = filesystem(uri)
        return fs.open(key, "rb")
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    try:
        st = os.fstat(fd)
        if (kind := _kind(st.st_mode)) is not None:
            raise Refused(f"{uri} is {kind}, not a regular file")
        within_limit(uri, st.st_size, limit)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def _chunks(f: BinaryIO, uri: str, limit: str) -> Iterator[bytes]:
    """An open input's content in chunks: at most `LIMITS[limit]` bytes, Refused past that (a
    file that grows while it is read is not read on)."""
    left = int(LIMITS[limit].hi) + 1
    while left > 0 and (chunk := f.read(min(CHUNK, left))):
        left -= len(chunk)
        if left <= 0:
            within_limit(uri, int(LIMITS[limit].hi) + 1, limit)
        yield chunk


def read_bytes(uri: str, limit: str = IMAGE) -> bytes:
    """The whole content of an input, at most `LIMITS[limit]` bytes."""
    with open_input(uri, limit) as f:
        return b"".join(_chunks(f, uri, limit))


def load_image(source: str | bytes, mode: str | None = None):
    """An input image from a URI (read as `read_bytes` reads) or its bytes: decoded, turned
    upright by its EXIF orientation, and converted to `mode` when given. The one way the pixels
    of a product photo, mask, reference image or earlier output are read."""
    import io

    from PIL import Image, ImageOps

    data = source if isinstance(source, bytes) else read_bytes(source)
    with Image.open(io.BytesIO(data)) as im:
        im.load()
        upright = ImageOps.exif_transpose(im)
    return upright.convert(mode) if mode is not None and upright.mode != mode else upright


def content_digest(data: bytes) -> str:
    return "b2:" + hashlib.blake2b(data, digest_size=16).hexdigest()


def fingerprint(uri: str, limit: str = WEIGHTS) -> str:
    """What the content is, not where it lives: a hash of a local file's bytes; for an object
    store, the fingerprint it already keeps (ETag, MD5, version or generation) and the size,
    so a million-object catalogue needs a listing, not a million downloads."""
    if split(uri)[0] != LOCAL:
        fs, path = filesystem(uri)
        info = _object(uri, fs.info(path), limit)
        for key in ("ETag", "etag", "md5Hash", "content_md5", "VersionId", "generation"):
            if info.get(key):
                return f"{key.lower()}:{str(info[key]).strip(chr(34))}:{info.get('size')}"
    h = hashlib.blake2b(digest_size=16)
    with open_input(uri, limit) as f:
        for chunk in _chunks(f, uri, limit):
            h.update(chunk)
    return "b2:" + h.hexdigest()


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
