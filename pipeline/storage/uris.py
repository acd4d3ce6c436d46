"""Reading an input by its URI: the one way the bytes of a product photo, mask, reference image,
LoRA file, table or job file are read, locally or from object storage (fsspec).

A URI is resolved first (`pipeline.storage.paths`). It is read only when it is a regular file or
one object, no larger than its limit in the one table of limits (`pipeline.spec.limits.LIMITS`),
and never more than that limit is read, so a wrong path (/dev/zero, /dev/null, a named pipe, a
folder) is refused by name instead of filling memory or hanging. A remote input is listed once:
`info` checks it and `open_input` takes that listing along instead of asking again.
`load_image` is the one way an input image's pixels are read; `fingerprint` names the content,
not the place, for item ids; `local_copy` hands a library that opens only local files a whole
copy (`pipeline.storage.write.staged_file`).
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from collections.abc import Iterator
from typing import BinaryIO

from pipeline.errors import Refused, StorageError
from pipeline.spec.limits import LIMITS
from pipeline.storage.paths import LOCAL, split

CHUNK = 1 << 20


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


def info(uri: str, limit: str = IMAGE) -> dict:
    """The listing of the regular file or object `uri` (its `size`, and on object storage what
    the store keeps: ETag, version…), which is not opened: FileNotFoundError when absent, Refused
    when it is something else (a device, a pipe, a folder) or larger than `LIMITS[limit]`. Hand
    it to `open_input` or `fingerprint` so they need not ask again."""
    scheme, path = split(uri)
    if scheme == LOCAL:
        st = os.stat(path)
        if (kind := _kind(st.st_mode)) is not None:
            raise Refused(f"{uri} is {kind}, not a regular file")
        return {"size": within_limit(uri, st.st_size, limit)}
    fs, key = filesystem(uri)
    return _object(uri, fs.info(key), limit)


def _object(uri: str, listing: dict, limit: str) -> dict:
    """An object store's listing of `uri`, once it is known to be one object within the limit."""
    if listing.get("type", "file") != "file":
        raise Refused(f"{uri} is a {listing.get('type')}, not a file")
    within_limit(uri, int(listing.get("size") or 0), limit)
    return listing


def open_input(uri: str, limit: str = IMAGE, listing: dict | None = None) -> BinaryIO:
    """`uri` open for reading, once `info` admits it (`listing`: what `info`, or a store's
    listing of a folder, already said, so the store is not asked again). A local file is opened
    without blocking and checked again by its descriptor, so a pipe put in its place after the
    check cannot hang the read."""
    scheme, path = split(uri)
    if scheme != LOCAL:
        fs, key = filesystem(uri)
        listing = _object(uri, listing if listing is not None else fs.info(key), limit)
        f = fs.open(key, "rb", size=int(listing.get("size") or 0))
        if isinstance(getattr(type(f), "details", None), property):  # fsspec's buffered files
            f.details = listing  # would ask the store for it again on their first read
        return f
    if listing is None:
        info(uri, limit)
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


def parts(where: str, suffix: str, limit: str) -> list[tuple[str, dict]]:
    """The files a URI names, each with its listing: itself, or the files ending in `suffix`
    under a folder or prefix (one listing for them all). Each a regular file or object, all
    together within `LIMITS[limit]`; FileNotFoundError when there is none."""
    scheme, path = split(where)
    if scheme == LOCAL:
        found = (sorted(os.path.join(d, n) for d, _, names in os.walk(path) for n in names if n.endswith(suffix))
                 if os.path.isdir(path) else [path])
        listed = [(p, info(p, limit)) for p in found]
    else:
        fs, key = filesystem(where)
        top = fs.info(key)
        if top.get("type") == "directory":
            found = sorted((p, d) for p, d in fs.find(key, detail=True).items() if p.endswith(suffix))
            listed = [(f"{scheme}://{p}", _object(f"{scheme}://{p}", d, limit)) for p, d in found]
        else:
            listed = [(where, _object(where, top, limit))]
    if not listed:
        raise FileNotFoundError(where)
    within_limit(where, sum(int(d.get("size") or 0) for _, d in listed), limit)  # all together
    return listed


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


def fingerprint(uri: str, limit: str = WEIGHTS, listing: dict | None = None) -> str:
    """What the content is, not where it lives: a hash of a local file's bytes; for an object
    store, the fingerprint it already keeps (ETag, MD5, version or generation) and the size,
    so a million-object catalogue needs a listing, not a million downloads (`listing`: one
    already made by `info`)."""
    if split(uri)[0] != LOCAL:
        listing = listing if listing is not None else info(uri, limit)
        for key in ("ETag", "etag", "md5Hash", "content_md5", "VersionId", "generation"):
            if listing.get(key):
                return f"{key.lower()}:{str(listing[key]).strip(chr(34))}:{listing.get('size')}"
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
    into a cache folder named by its fingerprint, so a changed object is fetched again. The copy
    is staged and renamed (`staged_file`): a fetch that fails half-way leaves nothing."""
    from pipeline.storage.write import staged_file

    scheme, path = split(uri)
    if scheme == LOCAL:
        return path
    key = hashlib.blake2b(fingerprint(uri).encode(), digest_size=16).hexdigest()
    target = os.path.join(cache_root(), key, posixpath.basename(path))
    if not os.path.isfile(target):
        fs, remote = filesystem(uri)
        with staged_file(target) as temp:  # whole or absent: a racing fetch on the same node is harmless
            fs.get_file(remote, str(temp))
    return target
