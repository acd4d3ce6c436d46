"""One run of a job, start to finish: lock, plan, resume, stream, commit, compact, summarise.

Ray-free (the runner owns Ray), so the whole flow also runs in-process. The order matters:
everything that can reject the job (spec, manifest, signer, output folder) happens before
any model is loaded, and every outcome is committed in whole-row shards as it arrives.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import platform
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import faults
from pipeline.errors import EXIT_INCOMPLETE, EXIT_OK, JobError, LockLost, ManifestError, OutputLocked, Problem
from pipeline.plan.build import PlanFile, write_plan
from pipeline.plan.work import PRIOR, candidates, rows_per_group, write_work
from pipeline.review import decisions as review
from pipeline.run import results
from pipeline.run.progress import Reporter
from pipeline.spec import schema
from pipeline.spec.config import JobConfig
from pipeline.spec.manifest import Inputs, load_inputs
from pipeline.storage.lock import acquire, holder_name
from pipeline.storage.scratch import Scratch
from pipeline.storage.store import Output
from pipeline.storage.write import TEMP_PREFIX

WORK = "_work"


@dataclass
class RunReport:
    run_id: str
    output_dir: Path | str  # the folder (a Path) or the prefix URI of an object-storage output
    summary: dict
    exit_code: int
    stopped: str | None = None  # why the run stopped early
    removed_strays: list[str] = field(default_factory=list)
    results: str = ""  # where results.parquet is


def prepare_output(out: Output) -> None:
    """The output can be locked, exists and takes writes (a probe written and removed), or JobError."""
    if not out.lockable:
        raise JobError(f"{out.uri}: outputs on {out.scheme}:// are not supported yet (two runs could write it at "
                       "once: the lock's conditional writes exist for s3:// only); write to s3:// or a local folder, "
                       f"and read inputs from {out.scheme}:// if they live there")
    probe = f"{TEMP_PREFIX}probe-{uuid.uuid4().hex}"  # a crash leaves a temp file, cleaned like any other
    try:
        if out.local:
            Path(out.root).mkdir(parents=True, exist_ok=True)
        out.put(probe, b"")
        out.delete(probe)
    except Exception as e:  # noqa: BLE001 — a folder, a bucket, credentials: say which and why
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise JobError(f"{out.uri}: output folder is not writable ({reason})") from None


def clear_results(out: Output) -> None:
    """--fresh: forget earlier results and images (the demo signer and run records stay)."""
    for prefix in (results.SHARDS, results.EMBEDDINGS, review.DECISIONS, "images"):
        out.delete_prefix(prefix)
    for name in (results.RESULTS, results.SUMMARY):
        out.delete(name)


def select_rows(inputs: Inputs, rows: tuple[str, ...]) -> Inputs:
    """The inputs limited to some ids; an unknown id is an error, not an empty run."""
    if not rows:
        return inputs
    import polars as pl

    unknown = sorted(set(rows) - set(inputs.manifest["id"].to_list()))
    if unknown:
        raise ManifestError([Problem(inputs.manifest_uri, f"--rows: no such id(s): {', '.join(unknown)}")])
    return dataclasses.replace(inputs, manifest=inputs.manifest.filter(pl.col("id").is_in(list(rows))))


def snapshot(cfg: JobConfig, run_id: str, out: Output, plan_rows: int) -> None:
    """Resolved config, library versions, and the models with their fingerprints, so any result
    can be traced to its run."""
    from importlib.metadata import PackageNotFoundError, version

    from pipeline.models.fingerprint import fingerprint

    versions = {}
    for pkg in ("asset-pipeline", "torch", "diffusers", "transformers", "open_clip_torch",
                "c2pa-python", "ray", "pyarrow", "polars"):
        try:
            versions[pkg] = version(pkg)
        except PackageNotFoundError:
            versions[pkg] = None
    m = cfg.models
    models = {
        "diffusion": {"spec": m.diffusion, "revision": m.diffusion_revision,
                      "fingerprint": fingerprint(m.diffusion, m.diffusion_revision)},
        "clip": {"spec": m.clip, "pretrained": m.clip_pretrained,
                 "fingerprint": fingerprint(m.clip_pretrained or m.clip)},
        "moderation": {"spec": m.moderation, "fingerprint": fingerprint(m.moderation)},
        "prompt_classifier": {"spec": m.prompt_classifier, "fingerprint": fingerprint(m.prompt_classifier)},
    }
    results.write_json({
        "run_id": run_id, "started_at": datetime.now(UTC).isoformat(),
        "host": platform.node(), "pid": os.getpid(), "python": platform.python_version(), "versions": versions,
        "models": models, "planned_candidates": plan_rows, "config": cfg.to_dict(),
    }, out, f"{results.RUNS}/{run_id}.json")


class _Committer:
    """Commits outcome tables in shards as they arrive. Each table is the outcome of whole units
    of work, so every shard holds whole manifest rows. `fence` (the lock's check) runs before
    each commit: a run that lost its output commits nothing more."""

    def __init__(self, store: results.ShardStore, run_id: str, shard_rows: int, fence: Callable[[], None]):
        self.store, self.run_id, self.shard_rows, self.fence = store, run_id, shard_rows, fence
        self.ready: list[pa.Table] = []
        self.ready_rows = 0
        self.counts: Counter = Counter()  # outcomes of this run's new candidates, by status
        self.shards = 0

    def add(self, batch: pa.Table) -> None:
        batch = batch.set_column(batch.schema.get_field_index("run_id"), "run_id",
                                 pa.array([self.run_id] * batch.num_rows, pa.string()))
        self.counts.update(batch.filter(pc.invert(batch[PRIOR]))["status"].to_pylist())
        self.ready.append(batch.drop_columns([PRIOR]))
        self.ready_rows += batch.num_rows
        if self.ready_rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if self.ready:
            self.shards += 1
            faults.kill_if("driver.kill_before_shard", self.shards)
            self.fence()
            self.store.write(pa.concat_tables(self.ready), kill_point=("driver.kill_mid_shard", self.shards))
            faults.kill_if("driver.kill_after_shard", self.shards)
            self.ready, self.ready_rows = [], 0


def _priors(chunk: pa.Table, committed: results.Committed, done: pa.Array, pending_rows: pa.Array) -> pa.Table | None:
    """Candidates of a plan chunk judged in earlier runs, of the rows that have pending ones:
    plan columns and their committed outcome, so the row is judged across attempts."""
    judged = chunk.filter(pc.and_(done, pc.is_in(chunk["id"], pending_rows)))
    if not judged.num_rows:
        return None
    outcome = committed.outcome_of(judged)
    table = judged.select([f.name for f in schema.PLAN_FIELDS])
    for name in ("path", "truncated", "scheduler"):
        table = table.set_column(table.schema.get_field_index(name), name, outcome[name])
    for f in schema.OUTCOME_FIELDS:
        table = table.append_column(f, outcome[f.name])
    return table


def _to_do(chunk: pa.Table, committed: results.Committed) -> tuple[pa.Array, pa.Array]:
    """Of a plan chunk: which candidates are done, and the ids of the rows that need work (a
    candidate not done, or one judged under other rules: the row is judged again)."""
    done, other_rules = committed.judged(chunk)
    return done, pc.unique(chunk["id"].filter(pc.or_(pc.invert(done), other_rules)))


def _pending(plan: PlanFile, committed: results.Committed) -> tuple[int, int]:
    """How many candidates have no finished outcome, and how many manifest rows need work."""
    candidates_to_go = rows_to_go = 0
    for chunk in plan.chunks(["item_id", "id", "judge_key"]):
        done, rows = _to_do(chunk, committed)
        candidates_to_go += len(done) - pc.sum(pc.cast(done, pa.int64())).as_py() if len(done) else 0
        rows_to_go += len(rows)
    return candidates_to_go, rows_to_go


def _work(plan: PlanFile, committed: results.Committed) -> Iterator[pa.Table]:
    """The rows of each plan chunk that need work: their pending candidates with the earlier
    judged ones, so each row is judged across attempts (and under today's rules)."""
    for chunk in plan.chunks():
        done, rows = _to_do(chunk, committed)
        if len(rows):
            yield candidates(chunk.filter(pc.invert(done)), _priors(chunk, committed, done, rows))


@contextlib.contextmanager
def work_folder(out: Output, run_id: str) -> Iterator[Path]:
    """The driver's temp files of a run (the plan, the pending work), removed when it ends: in
    the output folder when it is local (a killed run's are removed by the next, which holds the
    folder's lock); on object storage a folder of this run in the temp folder, marked live while
    the run lives, where the results table is staged too (a killed run's is removed by the next
    run on that machine: `scratch`)."""
    if out.local:
        work = Path(out.root) / WORK
        shutil.rmtree(work, ignore_errors=True)
        try:
            yield work
        finally:
            shutil.rmtree(work, ignore_errors=True)
        return
    scratch = Scratch(run_id)
    out.scratch = scratch.path
    try:
        yield scratch.path
    finally:
        out.scratch = None
        scratch.close()


def run_job(cfg: JobConfig, *, fresh: bool = False, backend: str = "ray",
            rows: tuple[str, ...] = (), reporter: Reporter | None = None,
            decisions: str | None = None) -> RunReport:
    """Run (or resume) the job; returns the report. Raises before any GPU work if it cannot run,
    and before anything is deleted.

    `rows` limits the run to these manifest ids: seeds and item ids do not depend on which
    other rows are present, so a row regenerated alone comes out as in the full run.
    `reporter` says what happens on stderr (default: a bar on a terminal, else plain lines).
    `decisions`: a reviewer's decisions file (CSV, JSON, Parquet) to apply; they are kept in
    the output, so every later run applies them too.
    """
    from pipeline.provenance.signing import Signer

    reporter = reporter or Reporter()

    out = Output(cfg.job.output)
    cfg = cfg.replace("job", output=out.uri)
    prepare_output(out)
    run_id = uuid.uuid4().hex[:12]
    try:
        lock = acquire(out, run=run_id, job=cfg.job.name)
    except OutputLocked as e:
        raise JobError(str(e)) from None
    try:
        # 1. everything that can reject the job, before any model loads and before --fresh
        inputs = select_rows(load_inputs(cfg), rows)
        for warning in inputs.warnings:
            reporter.warning(warning)
        if fresh and decisions:
            raise JobError("--fresh discards the results the decisions were made on: apply --decisions without it")
        recorded = review.load(out) if not fresh else review.Decisions.none()
        changed = (review.read(decisions, out, recorded.latest, cfg.generate.refine_strength) if decisions
                   else review.STORED_SCHEMA.empty_table())
        with work_folder(out, run_id) as work:
            # Planned to the driver's disk a chunk at a time: the plan is never whole in memory.
            decided = recorded.then(changed)
            plan = write_plan(inputs, cfg, work / f"plan-{run_id}.parquet", decisions=decided)
            if decided.history.num_rows:
                _warn_unplanned(decided, plan, inputs, out, reporter)
            Signer.from_section(cfg.signer, out, warn=reporter.warning).self_test(cfg.output.format)
            if fresh:
                lock.check()
                clear_results(out)
            elif rows and (others := results.row_ids(out) - set(rows)):
                raise JobError(f"{out}: holds results of other rows ({len(others)}, e.g. {sorted(others)[0]!r}); "
                               "--rows would hide them, so give it a separate --output")
            if decisions:
                # recorded before any work: a run that stops still leaves them for the next
                lock.check()
                review.record(out, changed)
                counts = Counter(changed["decision"].to_pylist())
                reporter.log(f"decisions {decisions}: {changed.num_rows} new or changed ("
                             + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
                             + "); the others were already in force", event="decisions", file=decisions,
                             changed=changed.num_rows, **{f"changed_{k}": v for k, v in counts.items()})
            return _run_locked(cfg, out, backend, inputs, plan, run_id, work, reporter, lock.check)
    except LockLost as e:
        if e.holder is None and (latest := _latest_other_run(out, run_id)):
            raise LockLost(f"{e}; the latest other run recorded in the output is {latest}") from None
        raise
    finally:
        lock.close()


def _latest_other_run(out: Output, run_id: str) -> str | None:
    """The run record of the latest run but this one, named as the lock names its holder."""
    records = []
    for rel in out.files(results.RUNS):
        try:
            record = json.loads(out.get(rel))
        except (OSError, ValueError):
            continue
        if isinstance(record, dict) and record.get("run_id") != run_id:
            records.append(record)
    if not records:
        return None
    latest = max(records, key=lambda r: str(r.get("started_at", "")))
    return (holder_name({"run": latest.get("run_id"), "job": latest.get("config", {}).get("job", {}).get("name"),
                         "host": latest.get("host"), "pid": latest.get("pid")})
            + f", started at {latest.get('started_at')}")


def _warn_unplanned(decided: review.Decisions, plan: PlanFile, inputs: Inputs, out: Output,
                    reporter: Reporter) -> None:
    """Say so when recorded decisions no longer apply: their candidates are not planned now."""
    gone = review.unplanned(decided, (c["item_id"] for c in plan.chunks(["item_id"])),
                            set(inputs.manifest["id"].to_list()))
    if gone.num_rows:
        first = gone.slice(0, 1).to_pylist()[0]
        reporter.warning(f"{gone.num_rows} reviewer decision(s) recorded in {out} are about candidates this plan no "
                         f"longer has (their prompt, settings or inputs changed), e.g. {first['decision']} of item "
                         f"{first['item_id']} of row {first['id']!r}: they no longer apply",
                         unplanned_decisions=gone.num_rows)


def _run_locked(cfg: JobConfig, out: Output, backend: str, inputs: Inputs, plan: PlanFile, run_id: str,
                work: Path, reporter: Reporter, fence: Callable[[], None]) -> RunReport:
    """Steps 2 and 3 of a run, holding the output. `fence` (the lock's check) runs before every
    commit and before more work is handed out: a run that lost its output stops (LockLost)."""
    from pipeline.run.runner import connect, execute, execute_in_process, size_pools

    started = time.monotonic()
    results.remove_temp(out)
    snapshot(cfg, run_id, out, plan.num_rows)
    # 2. resume: skip what earlier attempts committed (and whose files are still there)
    store = results.ShardStore(out)
    committed = store.committed()
    to_go, rows_to_go = _pending(plan, committed)
    reporter.log(f"run {run_id}: {plan.num_rows} candidates planned from {len(inputs.manifest)} rows, "
                 f"{plan.num_rows - to_go} already done, {to_go} to go, {rows_to_go} row(s) to judge → {out}",
                 event="run_start", run_id=run_id, job=cfg.job.name, output=out.uri, planned=plan.num_rows,
                 rows=len(inputs.manifest), already_done=plan.num_rows - to_go, to_go=to_go, rows_to_judge=rows_to_go)
    budget = int(cfg.job.max_failed_fraction * plan.num_rows)
    stopped, committer = None, None
    if rows_to_go:
        work_path = work / f"pending-{run_id}.arrow"
        groups = write_work(_work(plan, committed), work_path,
                            rows_per_group(rows_to_go, to_go, cfg.generate.batch_size))
        committer = _Committer(store, run_id, cfg.output.shard_rows, fence)
        reporter.start(to_go)  # progress from here: the actors' start-up counts, as it is waited for
        try:
            if backend == "ray":
                resources = connect(cfg.cluster.address)
                pools = size_pools(cfg, resources)
                reporter.log(f"cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; "
                             f"{pools.generate_actors} generate actor(s), "
                             + (f"{pools.write_actors} writer(s)" if pools.write_actors
                                else "each writing its own images"),
                             cpus=resources.get("CPU", 0), gpus=resources.get("GPU", 0),
                             generate_actors=pools.generate_actors, write_actors=pools.write_actors)
                stream = execute(str(work_path), groups, cfg, out.uri, pools, fence, run_id)
            else:
                stream = execute_in_process(str(work_path), cfg, out.uri, fence, run_id)
            try:
                stopped = _consume(stream, committer, reporter, budget, cfg, plan.num_rows)
            finally:
                try:
                    committer.flush()  # what was ready is committed, whatever stopped the stream
                finally:
                    stream.close()  # stops the actors now, not when the generator is collected
        finally:
            reporter.close()
        work_path.unlink(missing_ok=True)
    # 3. compact, clean up, summarise
    faults.kill_if("driver.kill_before_compact")
    committed = store.committed()
    summary = results.write_results(plan.chunks(), committed, out,
                                    gpu_hour_usd=cfg.cost.gpu_hour_usd if cfg.cost else None, before_commit=fence)
    removed = results.remove_strays(committed, out, before_delete=fence)
    summary["brand_consistency"] = results.brand_consistency(committed, out, summary.pop("reference_similarity"))
    summary.update(run_id=run_id, job=cfg.job.name, stopped=stopped, elapsed_s=round(time.monotonic() - started, 3),
                   this_run=dict(committer.counts) if committer else {})
    if committer and summary["elapsed_s"]:
        summary["candidates_per_s"] = round(sum(committer.counts.values()) / summary["elapsed_s"], 4)
        summary["written_per_s"] = round(committer.counts[schema.WRITTEN] / summary["elapsed_s"], 4)
    if summary["truncated_prompts"]:
        reporter.warning(f"{summary['truncated_prompts']} candidate prompt(s) exceeded the text encoder's window "
                         "and were truncated (see the `truncated` column)",
                         truncated_prompts=summary["truncated_prompts"])
    fence()
    results.write_json(summary, out, results.SUMMARY)
    code = EXIT_INCOMPLETE if stopped or summary["pending"] else EXIT_OK
    report = RunReport(run_id, Path(out.root) if out.local else out.uri, summary, code, stopped, removed,
                       out.where(results.RESULTS))
    reporter.end(describe(report), **summary, exit_code=code, results=report.results, removed_strays=len(removed))
    return report


def _consume(stream, committer: _Committer, reporter: Reporter, budget: int, cfg: JobConfig,
             planned: int) -> str | None:
    """Commit outcomes as they arrive, reporting progress; the reason the run stopped early, or None."""
    for units, batch in enumerate(stream, start=1):
        committer.add(batch)
        reporter.update(committer.counts)
        if faults.arg("driver.interrupt_after_units") == str(units):
            raise KeyboardInterrupt
        c = committer.counts
        if c[schema.ERROR] > budget:
            return (f"error budget exceeded: {c[schema.ERROR]} errors > "
                    f"{cfg.job.max_failed_fraction:.0%} of {planned} candidates")
    return None


def describe(report: RunReport) -> str:
    s = report.summary
    lines = [
        f"run {report.run_id} → {report.output_dir}",
        f"  planned {s['planned']} → generated {s['generated']} → passed moderation {s['passed_moderation']} "
        f"→ passed CLIP {s['passed_filters']} → selected {s['selected']} → signed {s['signed']} "
        f"→ written {s['written']}",
        f"  rejected {s['rejected']}, error {s['error']}, pending {s['pending']}",
    ]
    if s.get("candidates_per_s") is not None:
        model, cpu = s.get("model_s_per_candidate"), s.get("cpu_s_per_written_image")
        lines.append(f"  {s['elapsed_s']:.1f} s: {s['candidates_per_s']:.2f} candidates/s, "
                     f"{s['written_per_s']:.2f} written images/s"
                     + (f"; model {model:.3f} s/candidate" if model is not None else "")
                     + (f", CPU {cpu:.3f} s/written image" if cpu is not None else ""))
    if s["reasons"]:
        lines.append("  reasons: " + ", ".join(f"{k} {v}" for k, v in sorted(s["reasons"].items())))
    if report.removed_strays:
        lines.append(f"  removed {len(report.removed_strays)} file(s) no results row lists any more (images that lost "
                     "their place or a reviewer rejected, or a killed run's leftovers)")
    if report.stopped:
        lines.append(f"  STOPPED: {report.stopped}")
    lines.append(f"  results: {report.results}")
    return "\n".join(lines)
