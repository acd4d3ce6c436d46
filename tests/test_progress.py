"""Watching a run: a live bar on a terminal, a line at a steady interval in a log, JSON lines for
log collectors (`run --log-format`)."""

import json
import os
import pty
import re
import subprocess
import sys
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest

from pipeline.run.progress import Reporter, choose_mode
from tests.helpers import write_job

ROOT = Path(__file__).resolve().parents[1]
ROWS = {"id": ["a", "b", "c"], "prompt": ["a red mug", "a blue cup", "a bike"]}
SMALL = "[generate]\nsteps = 2\nwidth = 64\nheight = 64\nbatch_size = 1\n"  # one row a unit: several updates
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
PROGRESS = re.compile(r"^\[pipeline\] (\d+)/3 candidates · written (\d+) · rejected (\d+) · error (\d+) · "
                      r"[\d.]+ cand/s · eta \S+$")


def job(tmp_path):
    return write_job(tmp_path, ROWS, styles=None, extra=SMALL, num_candidates=1, keep=1)


def run(job_path, *args, stderr=subprocess.PIPE, **env):
    return subprocess.run([sys.executable, "-m", "pipeline", "run", str(job_path), "--in-process", *args],
                          cwd=ROOT, stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=300,
                          env={**os.environ, **env})


def test_json_log_format_writes_only_json_lines_ending_with_the_summary(tmp_path):
    r = run(job(tmp_path), "--log-format", "json", ASSET_PIPELINE_LOG_INTERVAL="0.2")
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout == ""  # the summary is the run_end event
    events = [json.loads(line) for line in r.stderr.splitlines()]  # every line is one JSON object
    for e in events:
        datetime.fromisoformat(e["ts"])
        assert e["level"] in ("info", "warning") and e["event"] in ("log", "run_start", "progress", "run_end")
    kinds = [e["event"] for e in events]
    assert kinds.count("run_start") == 1 and kinds[-1] == "run_end" and kinds.count("run_end") == 1
    start = events[kinds.index("run_start")]
    assert (start["planned"], start["to_go"], start["already_done"]) == (3, 3, 0)
    assert any(e["level"] == "warning" and "THROWAWAY" in e["msg"] for e in events)  # the demo signer
    progress = [e for e in events if e["event"] == "progress"]
    done = [e["done"] for e in progress]
    assert done == sorted(done) and done[0] < 3 and done[-1] == 3, done  # a heartbeat while models load
    for e in progress:
        assert e["total"] == 3 and e["written"] + e["rejected"] + e["error"] == e["done"]
        assert e["rate"] >= 0 and (e["eta_s"] is None or e["eta_s"] >= 0)
    end = events[-1]
    summary = json.loads((tmp_path / "out" / "summary.json").read_text())
    assert {k: end[k] for k in summary} == summary
    assert end["exit_code"] == 0 and end["written"] == 3 and end["results"].endswith("results.parquet")


def test_plain_lines_when_stderr_is_not_a_terminal(tmp_path):
    r = run(job(tmp_path), ASSET_PIPELINE_LOG_INTERVAL="0.2")  # auto; stderr is a pipe
    assert r.returncode == 0, r.stderr[-3000:]
    assert "\x1b" not in r.stderr and "\r" not in r.stderr  # no redraws in a log file
    lines = r.stderr.splitlines()
    assert all(line.startswith("[pipeline] ") for line in lines), lines
    assert any(re.match(r"\[pipeline\] run \w+: 3 candidates planned from 3 rows, 0 already done, 3 to go", line)
               for line in lines)
    progress = [m for m in map(PROGRESS.match, lines) if m]
    done = [int(m[1]) for m in progress]
    assert done[0] == 0 and done[-1] == 3 and done == sorted(done), lines  # steady lines, not only per unit
    assert progress[-1].groups() == ("3", "3", "0", "0")
    assert "planned 3 → generated 3" in r.stdout and "results:" in r.stdout  # the summary, as before


def test_a_live_bar_on_a_terminal(tmp_path):
    master, slave = pty.openpty()
    chunks: list[bytes] = []

    def read():
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        r = run(job(tmp_path), stderr=slave, TERM="xterm-256color", COLUMNS="160")
    finally:
        os.close(slave)
        reader.join(timeout=10)
        os.close(master)
    raw = b"".join(chunks).decode(errors="replace")
    assert r.returncode == 0, raw[-3000:]
    assert "\x1b[" in raw and "\r" in raw  # drawn, then redrawn in place
    text = ANSI.sub("", raw)
    assert re.search(r"3/3 candidates · written 3 · rejected 0 · error 0 · [\d.]+ cand/s · eta", text), text[-2000:]
    assert "━" in text and "3 to go" in text
    assert "planned 3 → generated 3" in r.stdout  # stdout keeps the summary, undrawn


class Recorder:
    """A log file that notes when each line arrived."""

    def __init__(self):
        self.lines: list[tuple[float, str]] = []

    def write(self, s: str) -> None:
        self.lines += [(time.monotonic(), line) for line in s.splitlines()]

    def flush(self) -> None:
        pass

    def isatty(self) -> bool:
        return False


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_progress_lines_come_at_the_interval_not_at_every_update(fmt):
    stream, interval = Recorder(), 0.25
    reporter = Reporter(fmt, stream=stream, interval=interval)
    t0 = time.monotonic()
    reporter.start(12)
    for i in range(12):  # an update every 0.1 s: more often than the interval
        time.sleep(0.1)
        reporter.update({"written": i + 1})
    reporter.close()
    elapsed = time.monotonic() - t0
    progress = [(t, line) for t, line in stream.lines if "candidates ·" in line]
    *beats, (_, final) = progress
    assert "12/12 candidates" in final  # and one at the end
    assert 2 <= len(beats) <= elapsed / interval + 1, beats
    times = [t0] + [t for t, _ in beats]
    assert all(b - a >= interval * 0.95 for a, b in zip(times, times[1:], strict=False)), times
    if fmt == "json":
        assert all(json.loads(line)["event"] == "progress" for _, line in progress)


def test_the_mode_is_chosen_once_from_the_format_and_the_stream(monkeypatch):
    class Terminal(Recorder):
        def isatty(self):
            return True

    monkeypatch.setenv("TERM", "xterm")
    assert choose_mode("auto", Terminal()) == "tty"
    assert choose_mode("auto", Recorder()) == "plain"
    assert choose_mode("text", Terminal()) == "plain"
    assert choose_mode("json", Terminal()) == "json"
    monkeypatch.setenv("TERM", "dumb")
    assert choose_mode("auto", Terminal()) == "plain"
    with pytest.raises(ValueError, match="auto, text, json"):
        choose_mode("xml", Recorder())


def test_in_json_mode_what_libraries_write_to_stderr_becomes_json_too(capsys):
    import logging
    import warnings

    reporter = Reporter("json", stream=sys.stderr, interval=60)
    logger = logging.getLogger("some.library")
    reporter.start(1)
    try:
        print("a library's note\nover two lines", file=sys.stderr)
        handler = logging.StreamHandler()  # made during the run, as `import ray` makes its own
        logger.addHandler(handler)
        logger.propagate = False
        logger.warning("a logged warning")
        warnings.warn("a deprecation", DeprecationWarning, stacklevel=1)
        reporter.update({"written": 1})
    finally:
        reporter.close()
        logger.removeHandler(handler)
        logger.propagate = True
    print("after the run", file=sys.stderr)  # the real stderr again
    err = capsys.readouterr().err.splitlines()
    assert err[-1] == "after the run"
    events = [json.loads(line) for line in err[:-1]]
    said = {e["msg"]: e for e in events if e["event"] == "log"}
    assert said["a library's note"]["source"] == "stderr" and "over two lines" in said
    assert "a logged warning" in said and said["a logged warning"]["level"] == "warning"
    assert any("DeprecationWarning: a deprecation" in m for m in said)
    assert events[-1]["event"] == "progress" and events[-1]["done"] == 1
