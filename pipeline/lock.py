"""One run per output at a time.

A local folder is locked with `flock`, which the OS releases when the process dies. An output on
object storage is locked by a lock object created with a conditional write (`If-None-Match: *`),
holding a lease that a heartbeat renews (`If-Match`, so a run that lost its lock notices). A
killed run's lock is taken over once its lease has run out, by a conditional replace of the
version read: of two runs racing for a stale lock, one wins.
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

from pipeline.store import Output

LOCK = ".lock"
# How long a lock object holds without a heartbeat (a killed run blocks its output this long).
LEASE_S = float(os.environ.get("ASSET_PIPELINE_LOCK_LEASE_S", "120"))


class OutputLocked(RuntimeError):
    """Another run holds the output."""


def acquire(out: Output, run: str):
    """The lock of `out` for this run; `.close()` releases it. Raises OutputLocked."""
    return _FileLock(out) if out.local else _ObjectLock(out, run)


class _FileLock:
    def __init__(self, out: Output):
        self._file = open(Path(out.root) / LOCK, "w")  # noqa: SIM115 — held for the run
        try:
            fcntl.flock(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._file.close()
            raise OutputLocked(f"{out.uri}: another run is using this output folder") from None

    def close(self) -> None:
        self._file.close()


class _ObjectLock:
    def __init__(self, out: Output, run: str):
        self.out, self.owner = out, {"run": run, "host": socket.gethostname(), "pid": os.getpid()}
        if not out.create(LOCK, self._body()):
            held, version = json.loads(out.get(LOCK)), out.version(LOCK)
            if held.get("expires", 0) > time.time():
                raise OutputLocked(f"{out.uri}: another run is using this output (run {held.get('run')} on "
                                   f"{held.get('host')}, pid {held.get('pid')}; its lease runs until "
                                   f"{time.strftime('%H:%M:%S', time.localtime(held['expires']))})")
            if version is None or not out.replace(LOCK, self._body(), version):
                raise OutputLocked(f"{out.uri}: another run took over this output's expired lock just now")
        self.version = out.version(LOCK)
        self._stop = threading.Event()
        self._beat = threading.Thread(target=self._renew, name="output-lock-lease", daemon=True)
        self._beat.start()

    def _body(self) -> bytes:
        return json.dumps({**self.owner, "expires": time.time() + LEASE_S}).encode()

    def _renew(self) -> None:
        while not self._stop.wait(LEASE_S / 4):
            try:
                if self.out.replace(LOCK, self._body(), self.version):
                    self.version = self.out.version(LOCK)
                else:
                    print(f"[pipeline] warning: {self.out.uri}: the output lock was taken over",
                          file=sys.stderr, flush=True)
                    return
            except OSError:  # a blip of the store: try again at the next beat
                continue

    def close(self) -> None:
        self._stop.set()
        self._beat.join(timeout=5)
        if self.out.version(LOCK) == self.version:
            self.out.delete(LOCK)
