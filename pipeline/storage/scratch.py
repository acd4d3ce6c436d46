"""The driver's temp folder of a run whose output is remote: its plan, its work file and the
results table being compacted live there, never in the output (DESIGN.md "Storage").

A killed run cannot remove its own folder, so each run's folder says whether its run still
lives: it is named after the run and its process (`asset-pipeline-<run id>-<pid>`) and holds a
marker file that the run keeps `flock`ed while it lives (the OS drops the lock when the process
dies, however it dies). Every run, as it starts, removes the folders whose marker nobody holds:
a dead run's, never a live one's, whatever job or output it ran. The folder is made under a
hidden name and renamed once its marker is held, so no run ever sees a live folder unmarked.
"""

from __future__ import annotations

import fcntl
import os
import secrets
import shutil
import tempfile
from pathlib import Path

PREFIX = "asset-pipeline-"
ALIVE = ".alive"


class Scratch:
    """A run's temp folder (`path`), marked live until `close()` removes it."""

    def __init__(self, run_id: str, root: str | Path | None = None):
        root = Path(root or tempfile.gettempdir())
        root.mkdir(parents=True, exist_ok=True)
        self.removed = sweep(root)  # dead runs' folders
        staging = root / f".{PREFIX}{secrets.token_hex(6)}"
        staging.mkdir()
        self._alive = open(staging / ALIVE, "w")  # noqa: SIM115 — held for the run
        fcntl.flock(self._alive, fcntl.LOCK_EX)
        self._alive.write(f"{os.getpid()}\n")
        self._alive.flush()
        self.path = root / f"{PREFIX}{run_id}-{os.getpid()}"
        staging.rename(self.path)

    def close(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)
        self._alive.close()


def sweep(root: str | Path) -> list[Path]:
    """Remove the run folders under `root` whose run is dead (their marker's flock is free); a
    folder without a marker (not one of ours, or an older release's) is left alone."""
    removed = []
    for folder in sorted(Path(root).glob(PREFIX + "*")):
        if folder.is_symlink() or not folder.is_dir():
            continue
        try:
            fd = os.open(folder / ALIVE, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            continue  # its run lives
        else:
            shutil.rmtree(folder, ignore_errors=True)  # held while removing: no other sweep races it
            removed.append(folder)
        finally:
            os.close(fd)
    return removed
