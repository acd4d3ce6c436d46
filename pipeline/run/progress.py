"""What a run says while it runs, in one of three modes chosen once:

- `tty`: a live bar on a terminal (rich), redrawn in place; messages print above it.
- `plain`: `[pipeline] ...` lines, and a progress line every `interval` seconds (whether or not a
  unit finished, so a scheduled job's log shows it is alive) plus one at the end.
- `json`: one JSON object per line, `{"ts", "level", "event", "msg", ...fields}`, for log collectors;
  progress events at the same steady interval as `plain`. While the run lasts, Python warnings and
  whatever libraries write to sys.stderr (Ray's notes) become `log` events too.

`--log-format auto` (the default) picks `tty` when the stream is a terminal, else `plain`;
`text` is always `plain`. The driver writes to stderr only through a `Reporter`.
"""

from __future__ import annotations

import io
import json
import os
import sys
import threading
import time
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TextIO

from pipeline.spec.vocabulary import STATUSES

FORMATS = ("auto", "text", "json")
FORMAT_ENV = "ASSET_PIPELINE_LOG_FORMAT"  # the default of `run --log-format`
INTERVAL_ENV = "ASSET_PIPELINE_LOG_INTERVAL"  # seconds between progress lines (plain and json)
DEFAULT_INTERVAL = 10.0


def choose_mode(fmt: str, stream: TextIO) -> str:
    """`tty`, `plain` or `json` for a --log-format value and the stream written to."""
    if fmt not in FORMATS:
        raise ValueError(f"--log-format (or ${FORMAT_ENV}) must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if fmt == "json":
        return "json"
    terminal = fmt == "auto" and getattr(stream, "isatty", lambda: False)() and os.environ.get("TERM") != "dumb"
    return "tty" if terminal else "plain"


def json_line(event: str, level: str = "info", **fields: Any) -> str:
    ts = datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    return json.dumps({"ts": ts, "level": level, "event": event, **fields}, ensure_ascii=False, default=str)


def interval_from_env() -> float:
    value = os.environ.get(INTERVAL_ENV)
    try:
        seconds = float(value) if value else DEFAULT_INTERVAL
    except ValueError:
        seconds = 0.0
    if not seconds > 0:
        raise ValueError(f"${INTERVAL_ENV} must be a number of seconds above 0, got {value!r}")
    return seconds


class Reporter:
    """Messages and progress of one run. `start(total)` when the work begins, `update(counts)`
    as each outcome table is committed, `close()` at the end (also on errors), `end(...)` with
    the summary."""

    def __init__(self, fmt: str = "auto", *, stream: TextIO | None = None, interval: float | None = None):
        self.stream = stream if stream is not None else sys.stderr
        self.mode = choose_mode(fmt, self.stream)
        self.interval = interval if interval is not None else interval_from_env()
        self.total = 0
        self.counts: dict[str, int] = dict.fromkeys(STATUSES, 0)
        self._started: float | None = None
        self._lock = threading.Lock()  # one line at a time: the heartbeat thread writes too
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._bar: Any = None  # rich.progress.Progress in tty mode, while running
        self._console: Any = None
        self._showwarning: Any = None
        self._stderr: TextIO | None = None

    # -- messages
    def log(self, msg: str, level: str = "info", event: str = "log", **fields: Any) -> None:
        if self.mode == "json":
            self._write(json_line(event, level, msg=msg, **fields))
            return
        text = f"[pipeline] {'warning: ' if level == 'warning' else ''}{msg}"
        if self.mode == "tty":
            self._rich_console().print(text, markup=False, highlight=False, soft_wrap=True,
                                       style="bold yellow" if level == "warning" else None)
        else:
            self._write(text)

    def warning(self, msg: str, **fields: Any) -> None:
        self.log(msg, "warning", **fields)

    def end(self, msg: str, **fields: Any) -> None:
        """The run's summary: a `run_end` event in json mode; in text modes the CLI prints it."""
        if self.mode == "json":
            self._write(json_line("run_end", "info", msg=msg, **fields))

    # -- progress
    def start(self, total: int) -> None:
        self.total, self._started = total, time.monotonic()
        if self.mode == "tty":
            self._bar = _make_bar(self._rich_console())
            self._task = self._bar.add_task("", total=total, **self._fields())
            self._bar.start()
        else:
            if self.mode == "json":  # what a library says (Ray's start-up notes) is one more JSON line
                self._showwarning, warnings.showwarning = warnings.showwarning, self._warning
                if self.stream is sys.stderr:
                    self._stderr, sys.stderr = sys.stderr, _JsonLines(self)
            self._stop.clear()
            self._thread = threading.Thread(target=self._beat, name="progress", daemon=True)
            self._thread.start()

    def update(self, counts: Mapping[str, int]) -> None:
        with self._lock:
            self.counts = {s: int(counts.get(s, 0)) for s in STATUSES}
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self._fields())

    def close(self) -> None:
        """The final progress line (or the bar's last frame); stops the heartbeat."""
        if self._started is None:
            return
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None
        if self._showwarning is not None:
            warnings.showwarning, self._showwarning = self._showwarning, None
        if self._stderr is not None:
            sys.stderr.flush()
            if isinstance(sys.stderr, _JsonLines):
                sys.stderr = self._stderr
            self._stderr = None
        if self._bar is not None:
            self._bar.update(self._task, completed=self.done, **self._fields())
            self._bar.stop()
            self._bar = None
        else:
            self._progress_line()
        self._started = None

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def snapshot(self) -> dict[str, Any]:
        """done, total, counts by status, candidates/s since start, and the ETA in seconds."""
        elapsed = time.monotonic() - self._started if self._started is not None else 0.0
        done = self.done
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - done) / rate if rate else None
        return {"done": done, "total": self.total, **self.counts, "rate": round(rate, 4),
                "eta_s": None if eta is None else round(eta, 1), "elapsed_s": round(elapsed, 3)}

    def _fields(self) -> dict[str, str]:
        s = self.snapshot()
        return {"funnel": f"written {s['written']} · rejected {s['rejected']} · error {s['error']}",
                "rate": f"{s['rate']:.2f} cand/s", "eta": "?" if s["eta_s"] is None else f"{s['eta_s']:.0f}s"}

    def _progress_line(self) -> None:
        s, f = self.snapshot(), self._fields()
        msg = f"{s['done']}/{s['total']} candidates · {f['funnel']} · {f['rate']} · eta {f['eta']}"
        if self.mode == "json":
            self._write(json_line("progress", "info", msg=msg, **s))
        else:
            self._write(f"[pipeline] {msg}")

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            self._progress_line()

    def _warning(self, message, category, filename, lineno, file=None, line=None) -> None:
        self.warning(f"{category.__name__}: {message}", source=f"{filename}:{lineno}")

    # -- output
    def _write(self, line: str) -> None:
        with self._lock:
            self.stream.write(line + "\n")
            self.stream.flush()

    def _rich_console(self):
        if self._console is None:
            from rich.console import Console

            self._console = Console(file=self.stream, force_terminal=True)
        return self._console


class _JsonLines(io.TextIOBase):
    """sys.stderr while a JSON run lasts: each line a library writes there (a log handler, Ray's
    lines from its actors) becomes a `log` event with `"source": "stderr"`. A handler that kept
    this stream goes on writing JSON after the run."""

    def __init__(self, reporter: Reporter):
        self.reporter, self.buffered = reporter, ""
        self.fd = reporter.stream.fileno

    def write(self, text: str) -> int:
        *lines, self.buffered = (self.buffered + text).split("\n")
        for line in lines:
            if line.strip():
                self.reporter.log(line.rstrip(), "warning", source="stderr")
        return len(text)

    def flush(self) -> None:
        if self.buffered.strip():
            self.write("\n")

    def fileno(self) -> int:
        return self.fd()

    def isatty(self) -> bool:
        return False


def _make_bar(console):
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("[pipeline]", markup=False), BarColumn(), MofNCompleteColumn(),
                    TextColumn("candidates · {task.fields[funnel]} · {task.fields[rate]} · eta {task.fields[eta]} ·"),
                    TimeElapsedColumn(),
                    console=console, refresh_per_second=2, redirect_stdout=False, redirect_stderr=True)
