"""The output folder, local or on object storage: one way to put, get, list and delete output,
with the same guarantees on both (DESIGN.md "Storage and exactly-once").

- `put` is atomic: locally the one atomic write (`pipeline.storage.write`: temp file, fsync,
  rename, fsync of the folder); on object storage one whole-object PUT, which readers see whole
  or not at all. Nothing is ever renamed on a bucket.
- `create` is exclusive, for the lock: locally an exclusive atomic write (the temp file linked
  to the name, which fails when something is there); on S3 a conditional PUT
  (`If-None-Match: *`). `replace` swaps an object only while it is still the version read
  (`If-Match`), so one run only takes over a lock whose lease ran out; `delete_if` removes it
  only while it is that version, so a run never removes the lock of the run that took over.
- `files(prefix)` lists relative paths of what is there (temp files excluded).

Paths are relative to the output root and never climb out of it (`pipeline.storage.paths.confine`).
Results, shards, images, run records, the summary, the demo signer, verify and report all go
through here.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from pipeline.storage import paths, uris
from pipeline.storage.layout import TEMP_PREFIX
from pipeline.storage.write import atomic_write, staged_file

READ_AHEAD = 1 << 20  # bytes a ranged read on object storage fetches beyond what it asks for


class Output:
    """An output folder (`/data/out`) or prefix (`s3://bucket/runs/nightly`)."""

    def __init__(self, uri: str):
        # Where this process stages large files bound for object storage (`staged`): the run's
        # own temp folder, which the next run removes if this one is killed. None: the system's.
        self.scratch: Path | None = None
        scheme, _ = paths.split(uri)
        self.local = scheme == paths.LOCAL
        self.uri = paths.resolve(uri, os.getcwd())
        if self.local:
            self.root, self.fs = self.uri, None
        else:
            self.fs, root = uris.filesystem(self.uri)
            self.root = root.rstrip("/")
        self.scheme = scheme

    @property
    def lockable(self) -> bool:
        """Whether one run can hold this output alone: a local folder (flock) or S3 (conditional
        writes). GCS and Azure have their own preconditions, not implemented yet."""
        return self.local or self.scheme == "s3"

    def __str__(self) -> str:
        return self.uri

    def where(self, rel: str = "") -> str:
        """The full path or URI of `rel`, for messages and for readers outside this module."""
        if not rel:
            return self.uri
        return str(self._local(rel)) if self.local else f"{self.uri}/{paths.confine(rel)}"

    def _local(self, rel: str) -> Path:
        return paths.confined(self.root, rel)

    def _remote(self, rel: str) -> str:
        return f"{self.root}/{paths.confine(rel)}"

    def put(self, rel: str, data: bytes, kill_point: tuple[str, int] | None = None) -> None:
        """Write `rel` whole. `kill_point` (tests) fires with the data written but not committed:
        locally a temp file not yet renamed, on object storage before the PUT."""
        from pipeline import faults

        armed = (lambda: faults.kill_if(*kill_point)) if kill_point else None
        if self.local:
            atomic_write(self._local(rel), data, before_replace=armed)
        else:
            if armed:
                armed()
            self.fs.pipe_file(self._remote(rel), data)

    @contextlib.contextmanager
    def staged(self, rel: str, before_commit: Callable[[], None] | None = None) -> Iterator[Path]:
        """A local file to write `rel` into, too large to hold in memory; it becomes `rel`, whole,
        when the block ends without an error. Locally a temp file beside the target, fsynced and
        renamed; on object storage a file in the temp folder (`scratch`), uploaded in one
        (multipart) PUT. `before_commit` runs just before the rename or upload (a lock check):
        when it raises, `rel` is left as it was."""
        if self.local:
            with staged_file(self._local(rel), before_commit) as temp:
                yield temp
            return
        temp = Path(tempfile.mkdtemp(prefix="asset-pipeline-staged-", dir=self.scratch)) / posixpath.basename(rel)
        try:
            yield temp
            if before_commit:
                before_commit()
            self.fs.put_file(str(temp), self._remote(rel))
        finally:
            shutil.rmtree(temp.parent, ignore_errors=True)

    def open(self, rel: str):
        """`rel` opened for reading (binary): readers such as Parquet fetch only the ranges they
        need (on object storage, ranged GETs). A GET reads ahead at most `READ_AHEAD`: a small
        shard comes in a request or two, a column of a large table without the rest (s3fs's own
        50 MB would fetch a whole results table for one of its columns)."""
        if self.local:
            return open(self._local(rel), "rb")
        return self.fs.open(self._remote(rel), "rb", block_size=READ_AHEAD)

    def get(self, rel: str) -> bytes:
        if self.local:
            return self._local(rel).read_bytes()
        return self.fs.cat_file(self._remote(rel))

    def get_versioned(self, rel: str) -> tuple[bytes, str] | None:
        """`rel` and the version (ETag) of exactly those bytes, read in one request; None if
        absent. (A `get` then a `version` could pair one object's bytes with the next one's ETag.)"""
        if self.local:
            raise NotImplementedError("a local output is locked with flock; it needs no versioned read")
        from fsspec.asyn import sync

        bucket, _, key = self._remote(rel).partition("/")

        async def read() -> tuple[bytes, str]:
            response = await self.fs._call_s3("get_object", Bucket=bucket, Key=key)
            try:
                return await response["Body"].read(), response["ETag"]
            finally:
                response["Body"].close()

        try:
            return sync(self.fs.loop, read)
        except FileNotFoundError:
            return None

    def exists(self, rel: str) -> bool:
        if self.local:
            return self._local(rel).is_file()
        self.fs.invalidate_cache(self._remote(rel))
        return self.fs.isfile(self._remote(rel))

    def files(self, prefix: str = "") -> set[str]:
        """Relative paths of every file under `prefix` (the whole output when empty)."""
        if self.local:
            rels = (rel for rel, _ in _walk(self._local(prefix) if prefix else Path(self.root), prefix))
        else:
            base = self._remote(prefix) if prefix else self.root
            self.fs.invalidate_cache(base)
            rels = (p[len(self.root) + 1:] for p in self.fs.find(base))
        return {r for r in rels if not posixpath.basename(r).startswith(TEMP_PREFIX)}

    def files_starting(self, folder: str, start: str) -> set[str]:
        """Relative paths of the files under `folder` whose path below it begins with `start`
        ("a" takes the subfolders a0..af whole, "a3/a3f" the names in a3 that begin a3f): one
        listing by key prefix on object storage, the matching subfolders locally."""
        if not self.local:
            base = self._remote(folder)
            self.fs.invalidate_cache(base)
            rels = (p[len(self.root) + 1:] for p in self.fs.find(base, prefix=start))
            return {r for r in rels if not posixpath.basename(r).startswith(TEMP_PREFIX)}
        head, _, name = start.rpartition("/")
        top = f"{folder}/{head}" if head else folder
        if not self._local(top).is_dir():
            return set()
        found: set[str] = set()
        stack = [(top, name)]
        while stack:  # os.scandir, not Path.rglob: a range of a large output holds ~10^5 files
            rel, wanted = stack.pop()
            with os.scandir(self._local(rel)) as entries:
                for entry in entries:
                    if not entry.name.startswith(wanted) or entry.name.startswith(TEMP_PREFIX):
                        continue
                    if entry.is_dir(follow_symlinks=False):
                        stack.append((f"{rel}/{entry.name}", ""))
                    else:
                        found.add(f"{rel}/{entry.name}")
        return found

    def sizes(self, prefix: str) -> dict[str, int]:
        """Every file under `prefix` with its size in bytes (one listing)."""
        if self.local:
            sized = {rel: entry.stat().st_size for rel, entry in _walk(self._local(prefix), prefix)}
        else:
            base = self._remote(prefix)
            self.fs.invalidate_cache(base)
            sized = {p[len(self.root) + 1:]: info["size"] for p, info in self.fs.find(base, detail=True).items()}
        return {r: s for r, s in sized.items() if not posixpath.basename(r).startswith(TEMP_PREFIX)}

    def delete_many(self, rels: list[str], before: Callable[[], None] | None = None) -> None:
        """Remove many files (on object storage a thousand to a request); `before` (the lock's
        check) runs before each batch goes."""
        for start in range(0, len(rels), 1000):
            if before:
                before()
            batch = rels[start:start + 1000]
            if self.local:
                for rel in batch:
                    self._local(rel).unlink(missing_ok=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    self.fs.rm([self._remote(r) for r in batch])

    def delete(self, rel: str) -> None:
        """Remove one file; a file already gone is fine."""
        if self.local:
            self._local(rel).unlink(missing_ok=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                self.fs.rm_file(self._remote(rel))

    def delete_prefix(self, prefix: str) -> None:
        """Remove everything under `prefix` (a folder, or every object with that key prefix)."""
        if self.local:
            target = self._local(prefix)
            if target.is_dir():
                shutil.rmtree(target)
            else:
                target.unlink(missing_ok=True)
        else:
            for rel in self.files(prefix):
                self.delete(rel)

    # ── exclusive creation and conditional replacement (the lock) ──────────────────────
    def create(self, rel: str, data: bytes) -> bool:
        """Write `rel` only if nothing is there: True when this call created it (`version` then
        says which version it made)."""
        if self.local:
            return atomic_write(self._local(rel), data, exclusive=True)
        return self._conditional_put(rel, data, IfNoneMatch="*") is not None

    def version(self, rel: str) -> str | None:
        """The version of `rel` that `replace` compares against (an ETag), or None if absent."""
        if self.local:
            path = self._local(rel)
            return f"{path.stat().st_mtime_ns}:{path.stat().st_size}" if path.is_file() else None
        self.fs.invalidate_cache(self._remote(rel))
        try:
            return self.fs.info(self._remote(rel))["ETag"]
        except FileNotFoundError:
            return None

    def replace(self, rel: str, data: bytes, version: str) -> str | None:
        """Overwrite `rel` only if it is still at `version`: the new version when this call
        replaced it, None when `rel` is another version now or gone."""
        if self.local:
            raise NotImplementedError("a local output is locked with flock; it needs no conditional replace")
        return self._conditional_put(rel, data, IfMatch=version)

    def delete_if(self, rel: str, version: str) -> bool:
        """Remove `rel` only if it is still at `version` (`If-Match`): True when this call removed it."""
        if self.local:
            raise NotImplementedError("a local output is locked with flock; it needs no conditional delete")
        bucket, _, key = self._remote(rel).partition("/")
        try:
            self.fs.call_s3("delete_object", Bucket=bucket, Key=key, IfMatch=version)
        except OSError as e:
            if isinstance(e, FileNotFoundError) or _precondition_failed(e):
                return False
            raise
        finally:
            self.fs.invalidate_cache(self._remote(rel))
        return True

    def _conditional_put(self, rel: str, data: bytes, **condition: str) -> str | None:
        """The new version (ETag) when the condition held and `rel` was written, else None."""
        if self.scheme != "s3":
            raise NotImplementedError(f"conditional writes on {self.scheme}:// outputs are not supported yet")
        bucket, _, key = self._remote(rel).partition("/")
        try:
            response = self.fs.call_s3("put_object", Bucket=bucket, Key=key, Body=data, **condition)
        except (FileExistsError, OSError) as e:
            # If-Match on an object that is gone answers 404 (FileNotFoundError): not replaced either.
            if isinstance(e, FileExistsError | FileNotFoundError) or _precondition_failed(e):
                return None
            raise
        finally:
            self.fs.invalidate_cache(self._remote(rel))
        return response["ETag"]


def _walk(base: Path, rel: str) -> Iterator[tuple[str, os.DirEntry]]:
    """Every file below the local folder `base` (`rel` in the output), as (relative path, entry),
    as `Path.rglob` finds them (into no linked folder; a linked file counts): by `os.scandir`,
    a hundred times faster than `rglob` and `relative_to` over a folder of images."""
    try:
        entries = list(os.scandir(base))
    except (FileNotFoundError, NotADirectoryError):
        return
    for entry in entries:
        path = f"{rel}/{entry.name}" if rel else entry.name
        if entry.is_dir(follow_symlinks=False):
            yield from _walk(Path(entry.path), path)
        elif entry.is_file():
            yield path, entry


def _precondition_failed(error: OSError) -> bool:
    """Whether the store refused a conditional request (412): s3fs raises it as an OSError."""
    return "pre-condition" in str(error) or "PreconditionFailed" in str(error)


def as_output(where: Output | os.PathLike | str) -> Output:
    """An Output from an Output, a local path or a URI (callers may hold any of them)."""
    return where if isinstance(where, Output) else Output(str(where))
