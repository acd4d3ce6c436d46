"""Kill runs at random moments, rerun, and check the exactly-once contract; prints a JSON line.

    .venv/bin/python tests/chaos_kill.py --trials 8 --rows 16 --seed 1

Each trial: a fresh output folder; the run is SIGKILLed (driver and, with --tree, its whole
process group: Ray workers too) after a random delay, up to --max-kills times, then rerun to
completion. Checked: one results row per candidate, every committed item id once, `verify`
passes (signed files intact, no strays), no temp files.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.helpers import write_job  # noqa: E402


def start(job: Path, out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "pipeline", "run", str(job), "--output", str(out)],
                            cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)


def check(out: Path, candidates: int) -> list[str]:
    import pyarrow.parquet as pq

    problems = []
    table = pq.read_table(out / "results.parquet")
    if table.num_rows != candidates or len(set(table["item_id"].to_pylist())) != candidates:
        problems.append(f"{table.num_rows} rows for {candidates} candidates")
    if any(s not in ("written", "rejected") for s in table["status"].to_pylist()):
        problems.append("unfinished or error rows")
    state = json.loads((out / "_state" / "current.json").read_text())
    if state["committed"] != candidates:
        problems.append(f"{state['committed']} outcomes committed for {candidates} candidates")
    v = subprocess.run([sys.executable, "-m", "pipeline", "verify", str(out)], cwd=ROOT, capture_output=True,
                       text=True)
    if v.returncode:
        problems.append("verify: " + v.stderr.strip()[:500])
    if list(out.rglob(".tmp-*")):
        problems.append("temp files left")
    return problems


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=8)
    ap.add_argument("--rows", type=int, default=16)
    ap.add_argument("--candidates", type=int, default=2)
    ap.add_argument("--max-kills", type=int, default=2)
    ap.add_argument("--max-delay", type=float, default=25.0)
    ap.add_argument("--tree", action="store_true", help="kill the whole process group, Ray workers too")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    folder = Path(tempfile.mkdtemp(prefix="chaos-"))
    rows = {"id": [f"sku-{i:04d}" for i in range(args.rows)],
            "prompt": [f"product photo number {i}, studio light" for i in range(args.rows)]}
    extra = "[generate]\nsteps = 2\nwidth = 64\nheight = 64\nbatch_size = 2\n[output]\nshard_rows = 4\n"
    job = write_job(folder, rows, styles=None, extra=extra, num_candidates=args.candidates, keep=1)
    kills = reruns = failures = 0
    for trial in range(args.trials):
        out = folder / f"out-{trial}"
        for _ in range(rng.randint(1, args.max_kills)):
            proc = start(job, out)
            delay = rng.uniform(1.0, args.max_delay)
            try:
                proc.wait(timeout=delay)
                break  # finished before the kill
            except subprocess.TimeoutExpired:
                (os.killpg if args.tree else os.kill)(proc.pid, signal.SIGKILL)
                proc.wait()
                kills += 1
                time.sleep(0.5)
        final = start(job, out)
        reruns += 1
        code = final.wait()
        problems = check(out, args.rows * args.candidates) if code == 0 else [f"rerun exit {code}"]
        failures += bool(problems)
        print(f"trial {trial}: kills so far {kills}, {problems or 'OK'}", file=sys.stderr)
    print(json.dumps({"trials": args.trials, "kills": kills, "final_reruns": reruns, "failed_trials": failures,
                      "candidates_per_trial": args.rows * args.candidates, "tree": args.tree}))


if __name__ == "__main__":
    main()
