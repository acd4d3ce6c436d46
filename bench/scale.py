"""Scale: plan + validate of large manifests, and the pipeline's cost as the run grows.

    .venv/bin/python bench/scale.py                 # 10k, 100k, 1M rows; driver at 1M, 10M; runs of 50, 400
    .venv/bin/python bench/scale.py --rows 10000 --driver-rows 100000 --runs 50 200

Each measurement runs in its own process, so its peak RSS is its own. Prints a table, then
one JSON object as the last line (also written to a file).
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

from bench.common import ROOT, emit, machine, peak_rss_mb, reset_peak_rss, table  # noqa: E402


def write_inputs(folder: Path, rows: int, candidates: int, extra: str = "") -> Path:
    import polars as pl

    i = pl.int_range(rows, eager=True)
    pl.DataFrame({"id": i.map_elements(lambda k: f"sku-{k:08d}", return_dtype=pl.String)}).with_columns(
        (pl.lit("product photo of ") + pl.col("id") + pl.lit(", studio light")).alias("prompt"),
        pl.when(i % 3 == 0).then(pl.lit("studio")).otherwise(None).alias("style"),
        pl.when(i % 5 == 0).then(i).otherwise(None).cast(pl.Int64).alias("seed"),
        pl.col("id").alias("sku"), (i % 7).alias("campaign"),
    ).write_parquet(folder / "manifest.parquet")
    pl.DataFrame({"style": ["studio"], "prompt_template": ["{prompt}, white background"],
                  "seeds": [[11, 22]]}).write_parquet(folder / "styles.parquet")
    job = folder / "job.toml"
    job.write_text(f'[job]\nmanifest = "manifest.parquet"\nstyles = "styles.parquet"\noutput = "out"\n'
                   f"num_candidates = {candidates}\nkeep = 1\n{extra}")
    return job


def child_plan(job: str) -> dict:
    from pipeline.plan.build import build_plan
    from pipeline.spec.load import load_job
    from pipeline.spec.manifest import load_inputs

    cfg = load_job(job)
    t0 = time.perf_counter()
    inputs = load_inputs(cfg)
    t1 = time.perf_counter()
    plan = build_plan(inputs, cfg)
    t2 = time.perf_counter()
    return {"validate_s": t1 - t0, "plan_s": t2 - t1, "candidates": plan.num_rows, "peak_rss_mb": peak_rss_mb()}


def synthetic_outcomes(chunk):
    """Committed outcomes as wide as real ones (every outcome column set, typical lengths), all
    `rejected` with no file, so compaction's memory is measured without generating."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.spec import schema

    n, ids = chunk.num_rows, chunk["item_id"]
    rng = np.random.default_rng(0)
    text = {"run_id": "0123456789ab", "job": "nightly-catalogue", "clip_model": "ViT-L-14", "moderation": "pass",
            "moderation_model": "/models/nsfw_image_detection", "status": "rejected", "reason": "not_selected",
            "c2pa_state": "Valid", "worker": "gpu-node-3:4242", "writer": "head:5151", "reason_code": "not_selected"}
    table = chunk.append_column("path", pa.nulls(n, pa.string()))
    for f in schema.OUTCOME_FIELDS:
        if f.name in text:
            col = pa.array([text[f.name]] * n, f.type)
        elif f.name == "sha256":
            col = pc.binary_join_element_wise(ids, ids, "")
        elif f.name == "c2pa_label":
            col = pc.binary_join_element_wise("urn:c2pa:", ids, "")
        elif pa.types.is_floating(f.type):
            col = pa.array(rng.random(n) * 100)
        elif pa.types.is_integer(f.type):
            col = pa.array(rng.integers(0, 1 << 20, n))
        elif pa.types.is_string(f.type):  # a file's path or hash (clean_path, preview_path): none, as rejected
            col = pa.nulls(n, f.type)
        elif pa.types.is_boolean(f.type):
            col = pa.array(np.zeros(n, bool))
        else:
            col = pa.array(np.full(n, 1_790_000_000_000, "datetime64[ms]")).cast(f.type)
        table = table.append_column(f, col)
    return table


def child_driver(job: str) -> dict:
    """The driver's own work on a large manifest, phase by phase, as `run_job` does it: load and
    validate; plan to its file and write the work file (a first run: everything pending); then
    compact a finished run (every candidate given a synthetic committed outcome). Each phase's
    peak is its own; the manifest's resident size is the baseline."""
    import gc

    from bench.common import reset_peak_rss, rss_mb
    from pipeline.plan.build import write_plan
    from pipeline.plan.work import rows_per_group, write_work
    from pipeline.run import resume
    from pipeline.run.compact import write_results
    from pipeline.run.shards import ShardStore
    from pipeline.spec.load import load_job
    from pipeline.spec.manifest import load_inputs
    from pipeline.storage.layout import WORK

    cfg = load_job(job)
    out = Path(cfg.job.output)
    t0 = time.perf_counter()
    inputs = load_inputs(cfg)
    gc.collect()
    t1, manifest_mb = time.perf_counter(), rss_mb()
    reset_peak_rss()
    plan = write_plan(inputs, cfg, out / WORK / "plan.parquet")
    committed = ShardStore(out).committed()
    todo = resume.to_do(plan, committed)
    to_go = todo.candidates
    groups = write_work(resume.work(plan, committed), out / WORK / "pending.arrow",
                        rows_per_group(todo.rows, to_go, cfg.generate.batch_size))
    t2, prepare_peak = time.perf_counter(), rss_mb("VmHWM")
    store = ShardStore(out)
    for chunk in plan.chunks(["item_id", "id", "scheduler", "truncated"]):
        store.write(synthetic_outcomes(chunk))
    gc.collect()
    t3 = time.perf_counter()
    reset_peak_rss()
    base = rss_mb()
    summary = write_results(plan.chunks(), ShardStore(out).committed(), out)
    t4, compact_peak = time.perf_counter(), rss_mb("VmHWM")
    assert summary["planned"] == plan.num_rows == to_go and summary["rejected"] == plan.num_rows, summary
    phases = {"plan_and_work": {"s": t2 - t1, "peak_mb": prepare_peak, "beyond_start_mb": prepare_peak - manifest_mb},
              "compaction": {"s": t4 - t3, "peak_mb": compact_peak, "beyond_start_mb": compact_peak - base}}
    phases.update(_later_phases(plan, out))
    return {"candidates": plan.num_rows, "units": len(groups), "validate_s": t1 - t0, "manifest_rss_mb": manifest_mb,
            "plan_and_work_s": t2 - t1, "plan_and_work_peak_mb": prepare_peak,
            "plan_and_work_beyond_manifest_mb": prepare_peak - manifest_mb,
            "compact_s": t4 - t3, "compact_peak_mb": compact_peak, "compact_beyond_start_mb": compact_peak - base,
            "phases": phases}


def _later_phases(plan, out: Path) -> dict:
    """What the driver does after the first run's compaction, each phase's peak its own: the
    resume of the finished output (nothing to do), the brand figures, and the report."""
    import gc

    from bench.common import reset_peak_rss, rss_mb
    from pipeline.review.report import write_report
    from pipeline.run import resume
    from pipeline.run.shards import ShardStore
    from pipeline.run.summary import brand_consistency

    def measured(fn) -> dict:
        gc.collect()
        reset_peak_rss()
        base, t0 = rss_mb(), time.perf_counter()
        fn()
        peak = rss_mb("VmHWM")
        return {"s": time.perf_counter() - t0, "peak_mb": peak, "beyond_start_mb": peak - base}

    def resumed():
        todo = resume.to_do(plan, ShardStore(out).committed())
        assert todo.candidates == 0, todo

    return {"resume": measured(resumed),
            "brand_figures": measured(lambda: brand_consistency(ShardStore(out).committed(), out)),
            "report": measured(lambda: write_report(out))}


def child_run(job: str) -> dict:
    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job

    report = run_job(load_job(job), backend="ray")
    res = pq.read_table(report.results, columns=["finished_at"])
    done = sorted(t.timestamp() for t in res["finished_at"].to_pylist())
    skip = min(16, len(done) // 4)  # the first unit of work: actor start and warm-up
    return {"candidates": len(done), "steady_s_per_image": (done[-1] - done[skip]) / (len(done) - 1 - skip),
            "wall_s": report.summary["elapsed_s"], "peak_rss_mb": peak_rss_mb(), "exit_code": report.exit_code}


def in_child(kind: str, job: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(job)], cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode:
        raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--candidates", type=int, default=2, help="candidates per row for plan/validate")
    ap.add_argument("--runs", type=int, nargs="*", default=[50, 400], help="candidates per pipeline run")
    ap.add_argument("--driver-rows", type=int, nargs="*", default=[1_000_000, 10_000_000],
                    help="manifest rows for the driver's plan, work file and compaction")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        reset_peak_rss()  # a forked child starts with its parent's peak
        kind, job = args.child
        print(json.dumps({"plan": child_plan, "driver": child_driver, "run": child_run}[kind](job)))
        return
    result: dict = {"bench": "scale", "plan": [], "driver": [], "runs": [], "machine": machine()}
    rows_table = []
    with tempfile.TemporaryDirectory(prefix="scale-") as tmp:
        for n in args.rows:
            folder = Path(tmp) / f"plan-{n}"
            folder.mkdir()
            m = in_child("plan", write_inputs(folder, n, args.candidates)) | {"rows": n}
            result["plan"].append(m)
            rows_table.append((f"{n:>9,} rows → {m['candidates']:,} candidates",
                               f"validate {m['validate_s']:.2f} s, plan {m['plan_s']:.2f} s, "
                               f"peak RSS {m['peak_rss_mb']:.0f} MB"))
        for n in args.driver_rows:
            folder = Path(tmp) / f"driver-{n}"
            folder.mkdir()
            m = in_child("driver", write_inputs(folder, n, args.candidates)) | {"rows": n}
            result["driver"].append(m)
            rows_table.append((f"driver, {n:>9,} rows: manifest", f"{m['manifest_rss_mb']:.0f} MB resident, "
                               f"validated in {m['validate_s']:.1f} s"))
            for phase, p in m["phases"].items():
                rows_table.append((f"driver, {n:>9,} rows ({m['candidates']:,} candidates): {phase}",
                                   f"{p['s']:.1f} s, peak {p['peak_mb']:.0f} MB (+{p['beyond_start_mb']:.0f} MB)"))
        extra = ("[generate]\nsteps = 1\nwidth = 64\nheight = 64\nbatch_size = 8\n"
                 "[output]\nshard_rows = 64\n[filter]\nimage_unsafe_threshold = 1.0\n")
        for n in args.runs:
            folder = Path(tmp) / f"run-{n}"
            folder.mkdir()
            m = in_child("run", write_inputs(folder, n, 1, extra))
            result["runs"].append(m)
            rows_table.append((f"pipeline, {n} candidates",
                               f"{m['steady_s_per_image'] * 1000:.1f} ms/image steady, wall {m['wall_s']:.1f} s, "
                               f"driver peak RSS {m['peak_rss_mb']:.0f} MB"))
    if len(result["runs"]) >= 2:
        first, last = result["runs"][0], result["runs"][-1]
        result["per_image_growth"] = last["steady_s_per_image"] / first["steady_s_per_image"] - 1
        result["driver_rss_growth_mb"] = last["peak_rss_mb"] - first["peak_rss_mb"]
        rows_table.append(("per-image time, largest vs smallest run", f"{result['per_image_growth']:+.1%}"))
        rows_table.append(("driver peak RSS, largest vs smallest run", f"{result['driver_rss_growth_mb']:+.0f} MB"))
    print(table(rows_table, f"scale ({result['machine']['cpu']}, {result['machine']['cores']} cores)"))
    emit(result, "scale", args.json)


if __name__ == "__main__":
    main()
