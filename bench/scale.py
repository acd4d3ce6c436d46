"""Scale: plan + validate of large manifests, and the pipeline's cost as the run grows.

    .venv/bin/python bench/scale.py                 # 10k, 100k, 1M rows; driver at 1M, 10M; runs of 50, 400
    .venv/bin/python bench/scale.py --rows 10000 --driver-rows 100000 --runs 50 200
    .venv/bin/python bench/scale.py --rows --runs --driver-rows 1000000 --candidates 2   # the driver at 2M

Each measurement runs in its own process, so its peak RSS is its own. Prints a table, then
one JSON object as the last line (also written to a file).

The driver's phases (`--driver-rows`) follow `run_job` (run/job.py) on a synthetic output: the
plan; a first run's resume and work file; the run's commits (`synthesize`: the writers' work,
timed only); the first compaction, from the shards; then a rerun of the finished output: its
resume, its compaction from the consolidated state; the brand figures, verify's unlisted-file
check and the report. The JSON's `driver` entries hold one entry per size, each phase's wall
time (`s`), peak resident size (`peak_mb`: VmHWM over the phase, the interpreter and imports,
`start_mb`, included) and, for compaction, `outcomes_per_s`.
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


def write_inputs(folder: Path, rows: int, candidates: int, extra: str = "", row_group_size: int | None = None) -> Path:
    import polars as pl

    i = pl.int_range(rows, eager=True)
    pl.DataFrame({"id": i.map_elements(lambda k: f"sku-{k:08d}", return_dtype=pl.String)}).with_columns(
        (pl.lit("product photo of ") + pl.col("id") + pl.lit(", studio light")).alias("prompt"),
        pl.when(i % 3 == 0).then(pl.lit("studio")).otherwise(None).alias("style"),
        pl.when(i % 5 == 0).then(i).otherwise(None).cast(pl.Int64).alias("seed"),
        pl.col("id").alias("sku"), (i % 7).alias("campaign"),
    ).write_parquet(folder / "manifest.parquet", row_group_size=row_group_size)
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


# The synthetic output's make-up: candidate 0 of every WRITTEN_ROWS-th manifest row is written
# (a file under images/, a CLIP embedding in the shard's sidecar), the rest rejected with no
# file; one stray image (a killed run's unlisted write) per STRAY_EVERY candidates.
WRITTEN_ROWS = 8  # 1 candidate in 16 at 2 a row (a real run with keep = 1 writes 1 in 2)
STRAY_EVERY = 1000
EMBEDDING_DIM = 768  # CLIP ViT-L/14's image embedding, 3 kB a row


def synthetic_outcomes(chunk, written_rows: int = WRITTEN_ROWS, seed: int = 0):
    """Committed outcomes as wide as real ones (every outcome column set, typical lengths) for
    a plan chunk (item_id, id, row, candidate, scheduler, truncated, truncated_by, style,
    variant, judge_key): candidate 0 of every `written_rows`-th row `written` with its image path and a
    unit CLIP embedding (`clip_embedding`, the shard's sidecar), the others `rejected` with no
    file, so resume, strays, brand figures and consolidation all have real work."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    from pipeline.spec import schema
    from pipeline.storage import layout

    n, ids = chunk.num_rows, chunk["item_id"]
    rng = np.random.default_rng(seed)
    written = (chunk["row"].to_numpy() % written_rows == 0) & (chunk["candidate"].to_numpy() == 0)
    w = pa.array(written)
    text = {"run_id": "0123456789ab", "job": "nightly-catalogue", "clip_model": "ViT-L-14", "moderation": "pass",
            "moderation_model": "/models/nsfw_image_detection", "c2pa_state": "Valid", "worker": "gpu-node-3:4242",
            "writer": "head:5151"}
    image = pc.binary_join_element_wise(f"{layout.IMAGES}/", pc.utf8_slice_codeunits(ids, 0, 2), "/", ids, ".png", "")
    chosen = {"status": pc.if_else(w, "written", "rejected"),
              "reason": pc.if_else(w, pa.scalar(None, pa.string()), "not_selected"),
              "reason_code": pc.if_else(w, pa.scalar(None, pa.string()), "not_selected"),
              "selected": w, "rank": pa.array(np.where(written, 1, 2)),
              "sha256": pc.binary_join_element_wise(ids, ids, ""),
              "c2pa_label": pc.binary_join_element_wise("urn:c2pa:", ids, ""),
              "judged_with": chunk["judge_key"]}  # judged under today's rules: a rerun has nothing to judge
    table = chunk.select(["item_id", "id", "scheduler", "truncated", "truncated_by", "style", "variant"])
    table = table.append_column("path", pc.if_else(w, image, pa.scalar(None, pa.string())))
    for f in schema.OUTCOME_FIELDS:
        if f.name in chosen:
            col = chosen[f.name]
        elif f.name in text:
            col = pa.array([text[f.name]] * n, f.type)
        elif pa.types.is_floating(f.type):
            col = pa.array(rng.random(n) * 100)
        elif pa.types.is_integer(f.type):
            col = pa.array(rng.integers(0, 1 << 20, n))
        elif pa.types.is_string(f.type):  # clean_path, clean_sha256, preview_path: none
            col = pa.nulls(n, f.type)
        elif pa.types.is_boolean(f.type):
            col = pa.array(np.zeros(n, bool))
        else:
            col = pa.array(np.full(n, 1_790_000_000_000, "datetime64[ms]")).cast(f.type)
        table = table.append_column(f, col.cast(f.type))
    vectors = rng.standard_normal((int(written.sum()), EMBEDDING_DIM), dtype=np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    offsets = np.concatenate([[0], np.cumsum(written * EMBEDDING_DIM)]).astype(np.int32)
    embedding = pa.ListArray.from_arrays(pa.array(offsets), pa.array(vectors.ravel()), mask=pa.array(~written))
    return table.append_column(schema.EMBEDDING_FIELD, embedding)


def synthesize(out: Path, plan, shard_rows: int, rows=None, ids: int = 0) -> dict:
    """A finished first run's commits, as its writers leave them: shards of `shard_rows`
    outcomes (whole rows) through `ShardStore.write` (its sidecars, its names; written without
    fsync, which costs the driver nothing and this bench minutes), an empty file for every
    written image, and strays. Not a driver phase: the writers' work. `rows(chunk)`: which
    plan rows are committed (all when None: a half-done run commits some); `ids`: the outcomes
    carry that many manifest ids, not the plan's (tests/test_driver_memory.py: `other_row`
    then reads every range)."""
    import os
    import uuid

    import numpy as np
    import pyarrow as pa

    from pipeline.run.shards import ShardStore

    store, files, strays = ShardStore(out), 0, 0

    def put(rel: str, data: bytes, kill_point=None) -> None:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(data)

    store.out.put = put
    made: set[str] = set()
    for number, chunk in enumerate(plan.chunks(["item_id", "id", "row", "candidate", "scheduler", "truncated",
                                                "truncated_by", "style", "variant", "judge_key"])):
        if rows is not None:
            chunk = chunk.filter(rows(chunk))
        outcomes = synthetic_outcomes(chunk, seed=number)
        if ids:
            fake = pa.array([f"row-{k}" for k in np.arange(outcomes.num_rows) % ids])
            outcomes = outcomes.set_column(outcomes.schema.get_field_index("id"), "id", fake)
        for start in range(0, outcomes.num_rows, shard_rows):
            store.write(outcomes.slice(start, shard_rows))
        for rel in outcomes["path"].drop_null().to_pylist():
            if (folder := rel.rsplit("/", 1)[0]) not in made:
                (out / folder).mkdir(parents=True, exist_ok=True)
                made.add(folder)
            os.close(os.open(out / rel, os.O_CREAT | os.O_WRONLY, 0o644))
            files += 1
        for _ in range(chunk.num_rows // STRAY_EVERY):
            name = uuid.uuid4().hex * 2
            (out / "images" / name[:2]).mkdir(parents=True, exist_ok=True)
            (out / "images" / name[:2] / f"{name}.png").touch()
            strays += 1
    return {"shards": store.written, "images": files, "strays": strays}


def _bench_paths(job: str):
    """The job's config, its output, the driver's work folder (spills, the work file) and its plan."""
    import pyarrow.parquet as pq

    from pipeline.plan.build import PlanFile
    from pipeline.spec.load import load_job
    from pipeline.storage.store import Output

    cfg = load_job(job)
    work = Path(job).parent / "work"
    plan_path = work / "plan.parquet"
    plan = PlanFile(plan_path, pq.read_metadata(plan_path).num_rows) if plan_path.exists() else None
    return cfg, Output(cfg.job.output), work, plan


def phase_plan(job: str) -> dict:
    """Phases 2 and 3 of `run_job`: validate the manifest, then plan to the driver's disk, each
    reading the manifest a chunk at a time. `after_validate_mb`: the resident size between them."""
    from bench.common import rss_mb
    from pipeline.plan.build import write_plan
    from pipeline.spec.manifest import load_inputs

    cfg, _, work, _ = _bench_paths(job)
    t0 = time.perf_counter()
    manifest = load_inputs(cfg)
    validate_s, after_validate_mb = time.perf_counter() - t0, rss_mb()
    plan = write_plan(manifest, cfg, work / "plan.parquet")
    return {"candidates": plan.num_rows, "validate_s": validate_s, "after_validate_mb": after_validate_mb}


def phase_first_resume(job: str) -> dict:
    """Phases 4 and 5 of a first run (nothing committed: everything pending): the state read,
    joined with the plan, counted, and the work file written."""
    from pipeline.plan.work import rows_per_group, write_work
    from pipeline.run import resume
    from pipeline.run.joined import Joined
    from pipeline.run.state import State

    cfg, out, work, plan = _bench_paths(job)
    Path(out.root).mkdir(parents=True, exist_ok=True)
    state = State(out, work, expected=plan.num_rows)
    joined = Joined(state, [plan], work, columns=resume.COUNTED)
    todo = resume.to_do(joined)
    joined.close()
    joined = Joined(state, [plan], work)
    index = write_work(resume.work(joined), work / "pending.arrow",
                       rows_per_group(todo.rows, todo.candidates, cfg.generate.batch_size))
    joined.close()
    state.close()
    (work / "pending.arrow").unlink()
    assert todo.candidates == plan.num_rows, todo
    return {"to_go": todo.candidates, "units": len(index)}


def phase_synthesize(job: str) -> dict:
    cfg, out, _, plan = _bench_paths(job)
    return synthesize(Path(out.root), plan, cfg.output.shard_rows)


def phase_compaction(job: str, first_run: bool = False) -> dict:
    """Phases 6 and 6b of `run_job`, exactly: the state refreshed, joined with the plan while
    each range is visited (strays, brand figures, consolidation), the results table written,
    the new generation committed, strays and covered shards removed. `first_run`: the state as
    `run_job` holds it then, opened at phase 3 when nothing was committed (its ranges cut for
    the plan's size), every shard taken in by the refresh."""
    from pipeline.run.compact import Strays, write_results
    from pipeline.run.consolidate import Consolidation, clean
    from pipeline.run.joined import Joined, visit_all
    from pipeline.run.state import State
    from pipeline.run.summary import BrandFigures

    class OpenedBeforeTheShards(State):
        def _delta(self) -> dict[str, int]:
            return super()._delta() if self.opened else {}

    cfg, out, work, plan = _bench_paths(job)
    OpenedBeforeTheShards.opened = not first_run
    state = OpenedBeforeTheShards(out, work, expected=plan.num_rows)
    state.opened = True
    shards = state.refresh()
    strays, brand = Strays(work / "strays.txt"), BrandFigures()
    consolidation = Consolidation(state, out)
    joined = Joined(state, [plan], work, visit=visit_all(strays, brand, consolidation))
    summary = write_results(joined.chunks(), out, gpu_hour_usd=cfg.cost.gpu_hour_usd if cfg.cost else None)
    joined.close()
    consolidated = consolidation.needed
    if consolidated:
        consolidation.commit()
    strays.remove(out)
    cleaned = clean(out)
    state.close()
    assert summary["planned"] == plan.num_rows and summary["pending"] == 0, summary
    figures = brand.result(summary.pop("similarity"))
    return {"outcomes": plan.num_rows, "written": summary["written"], "strays_removed": strays.images,
            "shards_read": shards, "ranges": len(state.prefixes()), "consolidated": consolidated,
            "files_cleaned": cleaned, "brand_images": sum(f["images"] for f in figures.values())}


def phase_resume(job: str) -> dict:
    """Phase 4 of a rerun of the finished output: the state (consolidated) joined with the plan
    and counted; nothing left to do, so no work file."""
    from pipeline.run import resume
    from pipeline.run.joined import Joined
    from pipeline.run.state import State

    _, out, work, plan = _bench_paths(job)
    state = State(out, work, expected=plan.num_rows)
    joined = Joined(state, [plan], work, columns=resume.COUNTED)
    todo = resume.to_do(joined)
    joined.close()
    state.close()
    assert todo.candidates == todo.rows == 0, todo
    return {"to_go": todo.candidates}


def phase_brand_figures(job: str) -> dict:
    """The brand figures alone, range by range (in `run_job` they ride compaction's visit)."""
    from pipeline.run.state import State
    from pipeline.run.summary import BrandFigures

    _, out, work, _ = _bench_paths(job)
    state, brand = State(out, work), BrandFigures()
    for found in state.ranges():
        brand(found)
    state.close()
    return {"images": sum(f["images"] for f in brand.result().values())}


def phase_unlisted(job: str) -> dict:
    """verify's check for image files that nothing lists."""
    from pipeline.review.verify import unlisted_files

    _, out, _, _ = _bench_paths(job)
    return {"unlisted": sum(1 for _ in unlisted_files(out))}


def phase_report(job: str) -> dict:
    from pipeline.review.report import write_report

    _, out, _, _ = _bench_paths(job)
    write_report(out)
    return {}


# The driver's phases in the order a first run and then a rerun meet them; `measured` False:
# not the driver's (the writers' commits), timed only.
PHASES = {"plan": phase_plan, "first_resume_and_work": phase_first_resume, "synthesize": phase_synthesize,
          "compaction_from_shards": lambda job: phase_compaction(job, first_run=True), "resume_finished": phase_resume,
          "compaction_consolidated": phase_compaction, "brand_figures": phase_brand_figures,
          "verify_unlisted": phase_unlisted, "report": phase_report}


def child_phase(name: str, job: str) -> dict:
    """One phase in this (fresh) process: its wall time, the peak resident size over it
    (VmHWM, reset once the modules are imported) and where it started."""
    import gc

    import pyarrow as pa

    import pipeline.review.report  # noqa: F401 — imports out of the figures
    import pipeline.review.verify  # noqa: F401
    import pipeline.run.job  # noqa: F401
    import pipeline.spec.manifest  # noqa: F401
    from bench.common import rss_mb

    gc.collect()
    pa.default_memory_pool().release_unused()
    reset_peak_rss()
    base, t0 = rss_mb(), time.perf_counter()
    found = PHASES[name](job)
    s, peak = time.perf_counter() - t0, rss_mb("VmHWM")
    return {"s": s, "peak_mb": peak, "start_mb": base, **found}


def driver_size(folder: Path, rows: int, candidates: int, skip: set[str]) -> dict:
    """Every phase at one size, each in its own process, on one synthetic output."""
    job = write_inputs(folder, rows, candidates)
    entry: dict = {"rows": rows, "phases": {}}
    for name in PHASES:
        if name in skip:
            continue
        p = in_child(f"phase:{name}", job, fatal=name in ("plan", "synthesize"))
        entry["phases"][name] = p
        print(f"  {rows:,} rows: {name}: {p['s']:.1f} s, peak {p.get('peak_mb', 0):.0f} MB"
              + (f" FAILED ({p['failed']})" if "failed" in p else ""), file=sys.stderr, flush=True)
    entry["candidates"] = entry["phases"].get("plan", {}).get("candidates", rows * candidates)
    if "compaction_from_shards" in entry["phases"]:
        for name in ("compaction_from_shards", "compaction_consolidated"):
            p = entry["phases"].get(name)
            if p and "failed" not in p:
                p["outcomes_per_s"] = entry["candidates"] / p["s"]
    return entry


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


def in_child(kind: str, job: Path, fatal: bool = True) -> dict:
    """`kind` measured in a fresh process; a failure stops the bench, or (`fatal` False: a driver
    phase, whose peers' figures are kept) is recorded with its exit code and stderr's tail."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, __file__, "--child", kind, str(job)], cwd=ROOT, capture_output=True,
                         text=True)
    if out.returncode:
        if fatal:
            raise SystemExit(f"{kind} failed:\n{out.stderr[-3000:]}")
        return {"failed": out.returncode, "s": time.perf_counter() - t0, "stderr": out.stderr[-2000:]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, nargs="*", default=[10_000, 100_000, 1_000_000])
    ap.add_argument("--candidates", type=int, default=2, help="candidates per row for plan/validate")
    ap.add_argument("--runs", type=int, nargs="*", default=[50, 400], help="candidates per pipeline run")
    ap.add_argument("--driver-rows", type=int, nargs="*", default=[1_000_000, 10_000_000],
                    help="manifest rows for the driver's phases (candidates: rows × --candidates)")
    ap.add_argument("--skip-phases", nargs="*", default=[], choices=list(PHASES),
                    help="driver phases to leave out (synthesize is needed by those after it)")
    ap.add_argument("--keep", help="a folder to build the driver's outputs in, kept (default: a temp folder)")
    ap.add_argument("--json")
    ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        reset_peak_rss()  # a forked child starts with its parent's peak
        kind, job = args.child
        if kind.startswith("phase:"):
            print(json.dumps(child_phase(kind.removeprefix("phase:"), job)))
        else:
            print(json.dumps({"plan": child_plan, "run": child_run}[kind](job)))
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
            folder = Path(args.keep or tmp) / f"driver-{n}"
            folder.mkdir(parents=True)
            m = driver_size(folder, n, args.candidates, set(args.skip_phases))
            result["driver"].append(m)
            for phase, p in m["phases"].items():
                if "failed" in p:
                    rows_table.append((f"driver, {m['candidates']:>11,} candidates: {phase}",
                                       f"failed (exit {p['failed']}) after {p['s']:.0f} s"))
                    continue
                rate = f", {p['outcomes_per_s']:,.0f} outcomes/s" if "outcomes_per_s" in p else ""
                rows_table.append((f"driver, {m['candidates']:>11,} candidates: {phase}",
                                   f"{p['s']:.1f} s, peak {p['peak_mb']:.0f} MB (from {p['start_mb']:.0f}){rate}"))
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
