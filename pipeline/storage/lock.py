"""One run per output at a time, and fencing: a run that lost its output commits nothing more.

A local folder is locked with `flock`, which the OS releases when the process dies: while the
run lives it cannot lose it, so its `check` does nothing. An output on object storage is locked
by a lock object created with a conditional write (`If-None-Match: *`). It names the run (run
id, job, host, pid) and holds a lease that a heartbeat renews (`If-Match` on the version this
run wrote). A killed run's lock is taken over once its lease has run out, by a conditional
replace of the version read: of two runs racing for a stale lock, one wins.

A lease can also run out under a run that lives: a driver paused past it (a long GC, a
suspended VM) resumes mid-loop, maybe after another run took the output over, and its heartbeat
cannot warn it in time. So the code that commits calls `check()` before each commit (a shard,
the results table, a stray removed, decisions recorded) and before it hands out more work: a
synchronous conditional renew, which fails when another run replaced the lock object or removed
it. `check` then raises LockLost, naming the run that holds the output now; the run stops and
exits 2. `close()` removes the lock only while it is still this run's version (`If-Match`).

What a plain object store leaves open: a stall of more than a whole lease between a check and
the one PUT right after it (each check renews the lease). And an actor mid-unit when its driver
paused finishes that unit: a lease must outlast a unit of work (the default, 120 s, does).
"""

from __future__ import annotations

import fcntl
import json
import os
import socket
import sys
import threading
import time
from pathlib import Path

from pipeline.errors import LockLost, OutputLocked
from pipeline.storage.layout import LOCK
from pipeline.storage.store import Output

# How long a lock object holds without a heartbeat (a killed run blocks its output this long).
LEASE_S = float(os.environ.get("ASSET_PIPELINE_LOCK_LEASE_S", "120"))


def acquire(out: Output, run: str, job: str = ""):
    """The lock of `out` for run `run` (a run id) of `job`: `.check()` before each commit raises
    LockLost once it is lost, `.close()` releases it. Raises OutputLocked."""
    return _FileLock(out) if out.local else _ObjectLock(out, run, job)


def confirm_holder(out: Output, run: str) -> None:
    """For the processes of a run that do not hold its lock object (its writers, on any node):
    LockLost unless the output's lock object still names run `run`. Checked before each image is
    written, so a writer whose driver lost the output (paused past its lease) writes nothing over
    the files of the run that took it over. A lease that ran out under a lock still naming `run`
    is not refused: no run has taken over yet, and one that does writes its own files later (a
    writer's clock or a slow heartbeat must not turn images into errors). A local folder's flock
    cannot be lost while the run lives: nothing to check."""
    if out.local:
        return
    try:
        held = json.loads(out.get(LOCK))
    except FileNotFoundError:
        held = None
    if held is None or held.get("run") != run:
        now = f"{holder_name(held)} holds it" if held else "the lock object is gone"
        raise LockLost(f"{out.uri}: run {run} no longer holds the output lock ({now}): nothing more is written", held)


def holder_name(owner: dict) -> str:
    """A lock owner as messages name it: run, job, host and pid."""
    job = f" of job {owner['job']!r}" if owner.get("job") else ""
    return f"run {owner.get('run')}{job} on {owner.get('host')}, pid {owner.get('pid')}"


class _FileLock:
    def __init__(self, out: Output):
        self._file = open(Path(out.root) / LOCK, "w")  # noqa: SIM115 — held for the run
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutputLocked(f"{out.uri}: another run is using this output folder") from None

    def check(self) -> None:
        """An flock is held until this process closes it or dies: it cannot be lost."""

    def close(self) -> None:
        self._file.close()


class _ObjectLock:
    def __init__(self, out: Output, run: str, job: str):
        self.out = out
        self.owner = {"run": run, "job": job, "host": socket.gethostname(), "pid": os.getpid()}
        self.lost: LockLost | None = None
        self._mutex = threading.Lock()  # the heartbeat and `check` renew one version at a time
        self.version, self.expires = self._take()
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._heartbeat, name="output-lock-lease", daemon=True)
        self._beat.start()

    def _body(self) -> tuple[bytes, float]:
        expires = time.time() + LEASE_S
        return json.dumps({**self.owner, "expires": expires}).encode(), expires

    def _take(self) -> tuple[str, float]:
        """Create the lock object, or take over one whose lease ran out: (version, expiry)."""
        for _ in range(3):  # a lock released between our create and our read: create again
            body, expires = self._body()
            if self.out.create(LOCK, body):
                version = self.out.version(LOCK)  # a fresh lease: no other run can have replaced it
                if version is not None:
                    return version, expires
                continue
            found = self.out.get_versioned(LOCK)
            if found is None:
                continue
            held = json.loads(found[0])
            if held.get("expires", 0) > time.time():
                raise OutputLocked(f"{self.out.uri}: another run is using this output ({holder_name(held)}; its "
                                   "lease runs until "
                                   f"{time.strftime('%H:%M:%S', time.localtime(held['expires']))})")
            body, expires = self._body()
            version = self.out.replace(LOCK, body, found[1])
            if version is None:
                raise OutputLocked(f"{self.out.uri}: another run took over this output's expired lock just now")
            return version, expires
        raise OutputLocked(f"{self.out.uri}: other runs are taking and releasing this output's lock; try again")

    def _renew(self) -> None:
        """Renew the lease, conditionally on the version this run last wrote; LockLost if another
        run replaced or removed it. OSError: the store did not answer."""
        with self._mutex:
            if self.lost:
                raise self.lost
            body, expires = self._body()
            version = self.out.replace(LOCK, body, self.version)
            if version is None:
                found = self.out.get_versioned(LOCK)
                held = json.loads(found[0]) if found else None
                if held and all(held.get(k) == v for k, v in self.owner.items()):
                    # Our own renewal, answered too late and retried: the store holds what we wrote.
                    self.version, self.expires = found[1], held.get("expires", 0)
                    return
                self.lost = LockLost(self._lost_message(held), held)
                raise self.lost
            self.version, self.expires = version, expires

    def _lost_message(self, held: dict | None) -> str:
        now = (f"{holder_name(held)} holds it now" if held else
               "the lock object is gone: a run that took the output over has finished since")
        return (f"{self.out.uri}: this run ({holder_name(self.owner)}) lost the output lock, {now}. It was paused "
                f"or cut off from the store past its {LEASE_S:g} s lease; it commits nothing more")

    def check(self) -> None:
        """Confirm, before a commit, that this run still holds the output: a synchronous
        conditional renew. Raises LockLost when another run took it over, or when the store does
        not answer and the lease has run down too far to trust it alone."""
        try:
            self._renew()
        except OSError as e:
            if time.time() < self.expires - LEASE_S / 2:  # a blip: the lease still holds a while
                return
            raise LockLost(f"{self.out.uri}: this run ({holder_name(self.owner)}) cannot confirm it still holds the "
                           f"output lock and its lease has run down ({type(e).__name__}: {e}); it commits nothing "
                           "more") from e

    def _heartbeat(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            try:
                self._renew()
            except LockLost as e:
                print(f"[pipeline] warning: {e}", file=sys.stderr, flush=True)
                return
            except OSError:  # a blip of the store: try again at the next beat
                continue

    def close(self) -> None:
        """Release the lock: remove the lock object only while it is still this run's version
        (never the lock of a run that took over)."""
        self._stop.set()
        self._beat.join(timeout=5)
        with self._mutex:
            if self.lost is None and self.out.version(LOCK) == self.version:
                self.out.delete_if(LOCK, self.version)
