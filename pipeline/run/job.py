"""One run of a job, start to finish: `run_job` reads top to bottom in numbered phases (lock,
validate, plan, resume, stream and commit, compact, summarise).

Ray-free (the runner owns Ray), so the whole flow also runs in-process. The order matters:
everything that can reject the job (spec, manifest, signer, output folder) happens before
any model is loaded, and every outcome is committed in whole-row shards as it arrives. What
is left to do lives in run/resume.py, the run record in run/record.py, streaming and
committing in run/stream.py; how a run is described is the command line's (commands.py).
"""

from __future__ import annotations

import contextlib
import shutil
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from pipeline import faults
from pipeline.errors import EXIT_INCOMPLETE, EXIT_OK, JobError, LockLost, OutputLocked
from pipeline.plan import formats
from pipeline.plan.build import PlanFile, write_plan
from pipeline.plan.work import rows_per_group, write_work
from pipeline.review import decisions as review
from pipeline.run import record, resume
from pipeline.run.compact import Strays, remove_temp, write_results
from pipeline.run.consolidate import Consolidation, clean
from pipeline.run.joined import Joined, visit_all
from pipeline.run.progress import Reporter
from pipeline.run.shards import ShardStore
from pipeline.run.state import State
from pipeline.run.stream import stream_and_commit
from pipeline.run.summary import BrandFigures
from pipeline.spec import vocabulary
from pipeline.spec.config import JobConfig
from pipeline.spec.manifest import load_inputs
from pipeline.storage import layout
from pipeline.storage.lock import acquire
from pipeline.storage.records import write_json
from pipeline.storage.scratch import Scratch
from pipeline.storage.store import Output


@dataclass
class RunReport:
    run_id: str
    output_dir: Path | str  # the folder (a Path) or the prefix URI of an object-storage output
    summary: dict
    exit_code: int
    stopped: str | None = None  # why the run stopped early
    removed_strays: list[str] = field(default_factory=list)  # the first thousand
    strays_removed: int = 0
    results: str = ""  # where results.parquet is


def prepare_output(out: Output) -> None:
    """The output can be locked, exists and takes writes (a probe written and removed), or JobError."""
    if not out.lockable:
        raise JobError(f"{out.uri}: outputs on {out.scheme}:// are not supported yet (two runs could write it at "
                       "once: the lock's conditional writes exist for s3:// only); write to s3:// or a local folder, "
                       f"and read inputs from {out.scheme}:// if they live there")
    probe = f"{layout.TEMP_PREFIX}probe-{uuid.uuid4().hex}"  # a crash leaves a temp file, cleaned like any other
    try:
        if out.local:
            Path(out.root).mkdir(parents=True, exist_ok=True)
        out.put(probe, b"")
        out.delete(probe)
    except Exception as e:  # noqa: BLE001 — a folder, a bucket, credentials: say which and why
        reason = e.strerror if isinstance(e, OSError) and e.strerror else f"{type(e).__name__}: {e}"
        raise JobError(f"{out.uri}: output folder is not writable ({reason})") from None


def clear_results(out: Output) -> None:
    """--fresh: forget earlier results, images and previews (the demo signer and run records stay)."""
    for prefix in (layout.SHARDS, layout.EMBEDDINGS, layout.STATE, layout.DECISIONS, layout.IMAGES, layout.PREVIEWS):
        out.delete_prefix(prefix)
    for name in (layout.RESULTS, layout.SUMMARY):
        out.delete(name)


@contextlib.contextmanager
def work_folder(out: Output, run_id: str) -> Iterator[Path]:
    """The driver's temp files of a run (the plan, the pending work), removed when it ends: in
    the output folder when it is local (a killed run's are removed by the next, which holds the
    folder's lock); on object storage a folder of this run in the temp folder, marked live while
    the run lives, where the results table is staged too (a killed run's is removed by the next
    run on that machine: `scratch`)."""
    if out.local:
        work = Path(out.root) / layout.WORK
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
    from pipeline.provenance.signer import Signer

    reporter = reporter or Reporter()
    # 1. lock: the output takes writes and is this run's alone; `lock.check` fences every commit
    out = Output(cfg.job.output)
    cfg = cfg.replace("job", output=out.uri)
    prepare_output(out)
    run_id = uuid.uuid4().hex[:12]
    try:
        lock = acquire(out, run=run_id, job=cfg.job.name)
    except OutputLocked as e:
        raise JobError(str(e)) from None
    try:
        # 2. validate: everything that can reject the job, before any model loads and before --fresh
        manifest = load_inputs(cfg).only(rows)
        for warning in manifest.warnings:
            reporter.warning(warning)
        if fresh and decisions:
            raise JobError("--fresh discards the results the decisions were made on: apply --decisions without it")
        recorded = review.load(out) if not fresh else review.Decisions.none()
        changed = (review.read(decisions, out, recorded.latest, cfg.generate.refine_strength) if decisions
                   else review.STORED_SCHEMA.empty_table())
        with work_folder(out, run_id) as work:
            # 3. plan: to the driver's disk a chunk at a time (never whole in memory); then the
            # signer's self-test, the last check, and what --fresh, --rows and --decisions change
            decided = recorded.then(changed)
            plan = write_plan(manifest, cfg, work / f"plan-{run_id}.parquet", decisions=decided)
            # the manifest ids recorded decisions name
            decided_rows = manifest.ids_among(set(decided.in_force["id"].to_pylist()))
            Signer.from_section(cfg.signer, out, warn=reporter.warning).self_test(cfg.output.format)
            if cfg.watermark.enabled:
                from pipeline.provenance.watermark import METHODS, self_test

                self_test(METHODS[cfg.watermark.method])
            if fresh:
                lock.check()
                clear_results(out)
            remove_temp(out)
            state = State(out, work, expected=plan.num_rows)  # the committed outcomes, a range at a time
            if not fresh and rows and (other := state.other_row(set(rows))):
                raise JobError(f"{out}: holds results of other rows (e.g. {other!r}); "
                               "--rows would hide them, so give it a separate --output")
            if decisions:  # recorded before any work: a run that stops still leaves them for the next
                lock.check()
                review.record(out, changed)
                _log_decisions(decisions, changed, reporter)

            # 4. resume: the run recorded, a killed run's temp files gone; skip what earlier attempts
            # committed (and whose files are still there)
            started = time.monotonic()
            record.write(cfg, run_id, out, plan.num_rows, manifest.styles)
            store = ShardStore(out, on_commit=state.took)  # the state takes each shard in as it commits
            joined = Joined(state, [plan], work, columns=resume.COUNTED)  # counted from two columns
            todo = resume.to_do(joined)
            joined.close()
            reporter.log(f"run {run_id}: {plan.num_rows} candidates planned from {manifest.rows} rows, "
                         f"{plan.num_rows - todo.candidates} already done, {todo.candidates} to go, "
                         f"{todo.rows} row(s) to judge → {out}",
                         event="run_start", run_id=run_id, job=cfg.job.name, output=out.uri, planned=plan.num_rows,
                         rows=manifest.rows, already_done=plan.num_rows - todo.candidates,
                         to_go=todo.candidates, rows_to_judge=todo.rows)

            # 5. stream and commit: the rows that need work to the driver's disk, handed out a
            # unit at a time; outcomes committed in whole-row shards as they arrive
            stopped, this_run = None, None
            if todo.rows:  # the work carries the judged candidates' whole outcomes: every column
                pending = work / f"pending-{run_id}.arrow"
                joined = Joined(state, [plan], work)
                index = write_work(resume.work(joined), pending,
                                   rows_per_group(todo.rows, todo.candidates, cfg.generate.batch_size))
                joined.close()
                stopped, this_run = stream_and_commit(cfg, backend, pending, index, store=store, run_id=run_id,
                                                      to_go=todo.candidates, planned=plan.num_rows,
                                                      reporter=reporter, fence=lock.check)
                pending.unlink(missing_ok=True)

            # 5b. channel formats: children of what is written now (or approved), planned from the
            # committed outcomes, then streamed and committed the same way (planned even when the
            # run stopped: the results list the formats made before, so their files stay)
            plans = [plan]
            if formats.wanted(cfg, manifest.styles):
                state.refresh()
                joined = Joined(state, [plan], work, columns=["status"])
                statuses = (o["status"] for _, o in joined.chunks(["item_id"]))
                plans.append(formats.plan_formats(plan, statuses, cfg, manifest.styles, decided.in_force,
                                                  work / f"formats-{run_id}.parquet"))
                joined.close()
                stopped, this_run = _run_formats(plans[-1], state, cfg, backend, store, run_id, work, reporter,
                                                 lock.check, stopped, this_run)
            if decided.history.num_rows:
                _warn_unplanned(decided, plans, decided_rows, out, reporter)

            # 6. compact: the results table from the committed outcomes, a range at a time on the
            # way: strays found, brand figures summed, and the ranges that changed consolidated
            faults.kill_if("driver.kill_before_compact")
            state.refresh()
            strays, brand = Strays(work / f"strays-{run_id}.txt"), BrandFigures()
            consolidation = Consolidation(state, out)
            joined = Joined(state, plans, work, visit=visit_all(strays, brand, consolidation))
            summary = write_results(joined.chunks(), out, before_commit=lock.check,
                                    gpu_hour_usd=cfg.cost.gpu_hour_usd if cfg.cost else None)
            joined.close()
            # 6b. consolidate: the new generation in force (last), then what it covers deleted
            if consolidation.needed:
                consolidation.commit(before_commit=lock.check)
            removed = strays.remove(out, before_delete=lock.check)
            clean(out, before_delete=lock.check)
            state.close()

            # 7. summarise: summary.json, and the report whose exit code says whether all is done
            similarity = summary.pop("similarity")
            summary["brand_consistency"] = brand.result(similarity)
            _add_run(summary, run_id, cfg, stopped, time.monotonic() - started, this_run)
            if summary["truncated_prompts"]:
                reporter.warning(f"{summary['truncated_prompts']} candidate prompt(s) exceeded the text encoder's "
                                 "window and were truncated (see the `truncated` column)",
                                 truncated_prompts=summary["truncated_prompts"])
            lock.check()
            write_json(summary, out, layout.SUMMARY)
            return RunReport(run_id, Path(out.root) if out.local else out.uri, summary,
                             EXIT_INCOMPLETE if stopped or summary["pending"] else EXIT_OK, stopped, removed,
                             strays.images, out.where(layout.RESULTS))
    except LockLost as e:
        if e.holder is None and (latest := record.latest_other(out, run_id)):
            raise LockLost(f"{e}; the latest other run recorded in the output is {latest}") from None
        raise
    finally:
        lock.close()


def _run_formats(plan: PlanFile, state: State, cfg: JobConfig, backend: str, store: ShardStore, run_id: str,
                 work: Path, reporter: Reporter, fence, stopped: str | None, this_run: Counter | None):
    """Stream and commit the channel formats left to make (none when the run already stopped)."""
    if stopped:
        return stopped, this_run
    joined = Joined(state, [plan], work, columns=resume.COUNTED)
    todo = resume.to_do(joined)
    joined.close()
    if not todo.rows:
        return stopped, this_run
    reporter.log(f"formats: {plan.num_rows} planned, {todo.candidates} to go", event="formats_start",
                 planned=plan.num_rows, to_go=todo.candidates, rows_to_judge=todo.rows)
    pending = work / f"pending-formats-{run_id}.arrow"
    joined = Joined(state, [plan], work)
    index = write_work(resume.work(joined), pending,
                       rows_per_group(todo.rows, todo.candidates, cfg.generate.batch_size))
    joined.close()
    stopped, made = stream_and_commit(cfg, backend, pending, index, store=store, run_id=run_id, to_go=todo.candidates,
                                      planned=plan.num_rows, reporter=reporter, fence=fence)
    pending.unlink(missing_ok=True)
    return stopped, (this_run or Counter()) + made if made is not None else this_run


def _log_decisions(decisions: str, changed: pa.Table, reporter: Reporter) -> None:
    counts = Counter(changed["decision"].to_pylist())
    reporter.log(f"decisions {decisions}: {changed.num_rows} new or changed ("
                 + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
                 + "); the others were already in force", event="decisions", file=decisions,
                 changed=changed.num_rows, **{f"changed_{k}": v for k, v in counts.items()})


def _add_run(summary: dict, run_id: str, cfg: JobConfig, stopped: str | None, elapsed: float,
             this_run: Counter | None) -> None:
    """This run's part of the summary: who, how long, what it made, and how fast."""
    summary.update(run_id=run_id, job=cfg.job.name, stopped=stopped, elapsed_s=round(elapsed, 3),
                   this_run=dict(this_run) if this_run is not None else {})
    if this_run is not None and summary["elapsed_s"]:
        summary["candidates_per_s"] = round(sum(this_run.values()) / summary["elapsed_s"], 4)
        summary["written_per_s"] = round(this_run[vocabulary.WRITTEN] / summary["elapsed_s"], 4)


def _warn_unplanned(decided: review.Decisions, plans: list[PlanFile], decided_rows: set[str], out: Output,
                    reporter: Reporter) -> None:
    """Say so when recorded decisions no longer apply: their candidates are not planned now."""
    gone = review.unplanned(decided, (c["item_id"] for p in plans for c in p.chunks(["item_id"])),
                            decided_rows)
    if gone.num_rows:
        first = gone.slice(0, 1).to_pylist()[0]
        reporter.warning(f"{gone.num_rows} reviewer decision(s) recorded in {out} are about candidates this plan no "
                         f"longer has (their prompt, settings or inputs changed), e.g. {first['decision']} of item "
                         f"{first['item_id']} of row {first['id']!r}: they no longer apply",
                         unplanned_decisions=gone.num_rows)
