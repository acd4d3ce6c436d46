"""The report at scale: time and peak memory to write report.html (and its row files) for a
synthetic results table (`tests.test_report.synthetic_results`: 3 candidates a row).

    .venv/bin/python -m bench.report                      # 1M candidates (333,334 rows)
    .venv/bin/python -m bench.report --candidates 100000

The table is made and written to results.parquet first, in row groups as compaction writes them
(a plan chunk of 50,000 manifest rows a row group); `report` then runs in its own process (as
`python -m pipeline report` would), so the peak RSS is the report's own. Prints a table, then one
JSON object as the last line (also written to a file).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, emit, machine, peak_rss_mb, rss_mb, table  # noqa: E402

ROW_GROUP = 150_000  # candidates a row group: a plan chunk of 50,000 rows, 3 candidates each


def write_results(folder: str | Path, candidates: int, row_group: int = ROW_GROUP) -> int:
    """results.parquet of a synthetic table of at least `candidates` (3 a row) in `folder`, in
    row groups of `row_group` candidates; returns how many it holds."""
    import pyarrow.parquet as pq

    from tests.test_report import synthetic_results

    results = synthetic_results(-(-candidates // 3))
    pq.write_table(results, Path(folder) / "results.parquet", row_group_size=row_group)
    return results.num_rows


def run_report(folder: str | Path) -> dict:
    """Write the report of `folder` in a process of its own: its seconds and memory."""
    child = subprocess.run([sys.executable, "-m", "bench.report", "--write-only", str(folder)], cwd=ROOT,
                           capture_output=True, text=True, check=True)
    return json.loads(child.stdout.strip().splitlines()[-1])


def write_only(folder: str) -> None:
    """The child: write the report of `folder`, print seconds and memory as JSON."""
    from pipeline.review.report import write_report

    before = rss_mb()
    started = time.perf_counter()
    write_report(folder)
    seconds = time.perf_counter() - started
    print(json.dumps({"seconds": seconds, "rss_before_mb": before, "peak_rss_mb": peak_rss_mb()}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--candidates", type=int, default=1_000_000)
    ap.add_argument("--row-group", type=int, default=ROW_GROUP, help="candidates a row group of results.parquet")
    ap.add_argument("--json", default=None)
    ap.add_argument("--write-only", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.write_only:
        return write_only(args.write_only)

    with tempfile.TemporaryDirectory(prefix="bench-report-") as folder:
        n = write_results(folder, args.candidates, args.row_group)
        measured = run_report(folder)
        files = [p.stat().st_size for p in Path(folder, "report_assets").rglob("rows-*.js")]
        assets = sum(p.stat().st_size for p in Path(folder, "report_assets").rglob("*.js"))
        html = Path(folder, "report.html").stat().st_size
    result = {"bench": "report", "machine": machine(), "candidates": n, "rows": -(-n // 3), **measured,
              "report_html_kb": html / 1024, "row_files": len(files), "row_file_kb": max(files) / 1024,
              "assets_mb": assets / 2**20}
    print(table([("candidates", n), ("write s", measured["seconds"]), ("peak RSS MB", measured["peak_rss_mb"]),
                 ("RSS before MB", measured["rss_before_mb"]), ("report.html KB", result["report_html_kb"]),
                 ("row files", result["row_files"]), ("largest row file KB", result["row_file_kb"]),
                 ("all row, index, search files MB", result["assets_mb"])], f"report of {n:,} candidates"))
    emit(result, "report", args.json)


if __name__ == "__main__":
    main()
