"""Each driver phase holds one range of item ids or one plan chunk at a time (issue 20): its
peak memory does not grow with the output it reads.

Each phase runs in a fresh process on a synthetic output (bench/scale.py's outcomes: as wide as
real ones, one candidate in sixteen written with a file and an embedding, strays beside them)
of 20,000 and of 80,000 candidates, with ranges of at most RANGE outcomes, results read RANGE
rows at a time, spills that buffer half as many and plan chunks of CHUNK_ROWS rows, so both
sizes have several of each (at the real sizes, 250,000, 65,536, 65,536 and 50,000, an output
this small is one range, one batch, one buffer and one chunk). What is measured is how far the
peak resident size (VmHWM) rose above where the process stood once its inputs were open; a
phase passes when the larger output raised it by at most GROWTH_MB more than the smaller.

Measured on 2 cores (MB more at 80,000 candidates than at 20,000, two runs): work file 1.8-1.9,
formats -2.4 to -1.6, compaction 6.8-9.7, resume 8.6, unlisted files 0.1-0.3, --rows' check
0.1-0.2. Before the committed state was read by range (4634fca: every latest outcome held at
once; the same phases through its API): 27.3, 55.6, 73.1, 52.1, 53.8 and 9.9."""

import json
import subprocess
import sys
from pathlib import Path

import pyarrow.compute as pc
import pytest

ROOT = Path(__file__).resolve().parents[1]
SMALL = 10_000  # manifest rows (2 candidates each): 20,000 and 80,000 candidates
# keyspace.RANGE_OUTCOMES, and the rows a results batch holds, in the children: 16 ranges of
# 1,250 outcomes at 20,000 candidates, 256 of 312 at 80,000 (within a number of digits a
# range grows with the output, up to RANGE_OUTCOMES; each digit more cuts it by 16)
RANGE = 2_500
CHUNK_ROWS = 2_500  # manifest rows a plan chunk: 4 and 16 chunks
# MB a phase may rise more at 4 × SMALL. A phase that joins (Joined) reads each plan chunk back
# as a piece from every range, and the ranges go from 16 to 256 between the sizes: a piece's
# buffers (56 columns) cost it 2-10 MB more; a phase that reads a range at a time, nothing.
# The plan (validated, then planned, a chunk at a time): 2.0-2.2 (the whole manifest held, at
# 0464785: 8.8-9.0).
GROWTH_MB = {"plan": 5.0, "work": 16.0, "formats": 16.0, "compaction": 16.0, "resume": 16.0, "unlisted": 3.0,
             "other_row": 3.0}
FORMATS = '[formats]\nsizes = ["9:16"]\n'
# The children allocate through malloc, on one thread (Arrow's and polars'): with mimalloc and
# thread pools the same phase's rise varied by ±12 MB from run to run, with these by ±0.2 MB.
QUIET = {"ARROW_DEFAULT_MEMORY_POOL": "system", "POLARS_MAX_THREADS": "1"}

# One phase in a fresh process: argv = phase, folder, RANGE. Prints how far the peak rose (MB).
PHASE = r"""
import gc, json, sys
from pathlib import Path

import pyarrow as pa

pa.set_cpu_count(1)  # one thread: what a phase holds, not how many threads' buffers were in flight
pa.set_io_thread_count(1)
import pyarrow.parquet as pq

import polars  # noqa: F401 — imported by the first range's split: a library's pages, not a phase's
import pipeline.storage.tables

pipeline.storage.tables.BATCH_ROWS = int(sys.argv[3])  # before its readers bind it: a batch of results

import pipeline.run.state
import pipeline.spec.duplicates
import pipeline.spec.manifest
from pipeline.run import keyspace

pipeline.spec.manifest.READ_ROWS = pipeline.spec.duplicates.BUCKET_ROWS = int(sys.argv[3])  # rows validated at a time

keyspace.RANGE_OUTCOMES = int(sys.argv[3])
pipeline.run.state.SPILL_ROWS = keyspace.RANGE_OUTCOMES // 2  # what a spill buffers

from pipeline.plan import formats
from pipeline.plan.build import PlanFile, write_plan
from pipeline.plan.work import rows_per_group, write_work
from pipeline.review import decisions
from pipeline.review.verify import unlisted_files
from pipeline.run import resume
from pipeline.run.compact import Strays, write_results
from pipeline.run.consolidate import Consolidation, clean
from pipeline.run.joined import Joined, visit_all
from pipeline.run.state import State
from pipeline.run.summary import BrandFigures
from pipeline.spec.load import load_job
from pipeline.spec.manifest import load_inputs
from pipeline.storage.store import Output

phase, folder = sys.argv[1], Path(sys.argv[2])
cfg = load_job(folder / "job.toml")
out, work = Output(cfg.job.output), folder / "work"
plan = PlanFile(work / "plan.parquet", pq.read_metadata(work / "plan.parquet").num_rows)
styles = load_inputs(cfg).styles if phase == "formats" else None
rows = {f"row-{k}" for k in range(8)}


def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))


def planned():  # phases 2 and 3: the manifest validated, then planned to the driver's disk
    plan = write_plan(load_inputs(cfg), cfg, work / "plan-again.parquet", chunk_rows=int(sys.argv[3]))
    assert plan.num_rows == pq.read_metadata(work / "plan.parquet").num_rows


def work_file():  # phases 4 and 5 of a rerun of a half-done output: the rest to the work file
    state = State(out, work, expected=plan.num_rows)
    joined = Joined(state, [plan], work, columns=resume.COUNTED)
    todo = resume.to_do(joined)
    joined.close()
    joined = Joined(state, [plan], work)
    write_work(resume.work(joined), work / "pending.arrow", rows_per_group(todo.rows, todo.candidates, 8, 100))
    joined.close()
    state.close()
    assert 0 < todo.candidates < plan.num_rows, todo


def formats_sources():  # phase 5b: the channel formats planned from the committed statuses
    state = State(out, work, expected=plan.num_rows)
    joined = Joined(state, [plan], work, columns=["status"])
    made = formats.plan_formats(plan, (o["status"] for _, o in joined.chunks(["item_id"])), cfg, styles,
                                decisions.Decisions.none().in_force, work / "formats.parquet")
    joined.close()
    state.close()
    assert made.num_rows, made


def compaction():  # phases 6 and 6b, as run_job does them
    state = State(out, work, expected=plan.num_rows)
    strays, brand = Strays(work / "strays.txt"), BrandFigures()
    consolidation = Consolidation(state, out)
    joined = Joined(state, [plan], work, visit=visit_all(strays, brand, consolidation))
    summary = write_results(joined.chunks(), out)
    joined.close()
    if consolidation.needed:
        consolidation.commit()
    strays.remove(out)
    clean(out)
    state.close()
    assert summary["pending"] == 0 and strays.images and brand.result(), summary


def resumed():  # phase 4 of a rerun of the finished (consolidated) output
    state = State(out, work, expected=plan.num_rows)
    joined = Joined(state, [plan], work, columns=resume.COUNTED)
    todo = resume.to_do(joined)
    joined.close()
    state.close()
    assert todo.candidates == 0, todo


def unlisted():  # verify's check for image files nothing lists
    assert not list(unlisted_files(out))


def other_row():  # run --rows: whether the output holds other rows (it holds none: every range read)
    assert State(out, work).other_row(rows) in (None, "sku-00000000")  # the results table's first


gc.collect()
pa.default_memory_pool().release_unused()
open("/proc/self/clear_refs", "w").write("5")
before = kib("VmRSS")
{"plan": planned, "work": work_file, "formats": formats_sources, "compaction": compaction, "resume": resumed,
 "unlisted": unlisted, "other_row": other_row}[phase]()
print(json.dumps((kib("VmHWM") - before) / 1024))
"""


def rose(phase: str, folder: Path) -> float:
    """MB the peak resident size of a fresh process rose by in `phase` on the output in `folder`."""
    out = subprocess.run([sys.executable, "-c", PHASE, phase, str(folder), str(RANGE)], cwd=ROOT,
                         capture_output=True, text=True, timeout=300, env={"PYTHONPATH": str(ROOT), **QUIET})
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def measured(folder: Path, rows: int) -> dict[str, float]:
    """Every phase's rise on a synthetic output of `rows` manifest rows, built as the runs leave
    it: half the rows committed (the work file of the rest), then all (formats and compaction
    from the shards), then consolidated (resume, verify, --rows)."""
    from bench.scale import synthesize, write_inputs
    from pipeline.plan.build import write_plan
    from pipeline.spec.load import load_job
    from pipeline.spec.manifest import load_inputs

    cfg = load_job(write_inputs(folder, rows, 2, FORMATS, row_group_size=CHUNK_ROWS))
    plan = write_plan(load_inputs(cfg), cfg, folder / "work" / "plan.parquet", chunk_rows=CHUNK_ROWS)
    found = {"plan": rose("plan", folder)}
    out = Path(cfg.job.output)
    for half in (0, 1):  # the even rows, then the odd ones
        synthesize(out, plan, cfg.output.shard_rows, ids=8,
                   rows=lambda chunk, half=half: pc.equal(pc.bit_wise_and(chunk["row"], 1), half))
        if not half:
            found["work"] = rose("work", folder)
    for phase in ("formats", "compaction", "resume", "unlisted", "other_row"):
        found[phase] = rose(phase, folder)
    return found


@pytest.fixture(scope="module")
def rises(tmp_path_factory) -> tuple[dict, dict]:
    return (measured(tmp_path_factory.mktemp("small"), SMALL),
            measured(tmp_path_factory.mktemp("large"), 4 * SMALL))


@pytest.mark.slow  # 80-140 s on 2 cores: two synthetic outputs, twelve fresh processes
@pytest.mark.parametrize("phase", ["plan", "work", "formats", "compaction", "resume", "unlisted", "other_row"])
def test_a_driver_phase_holds_no_more_for_four_times_the_candidates(rises, phase):
    small, large = rises
    print(f"{phase}: +{small[phase]:.1f} MB at {2 * SMALL:,} candidates, +{large[phase]:.1f} MB at {8 * SMALL:,}")
    assert large[phase] - small[phase] <= GROWTH_MB[phase], (phase, small[phase], large[phase])
