"""What each command of the command line does, once `cli.py` has parsed its arguments.

validate and plan check and plan the job a chunk at a time (never the whole manifest at once),
warn about prompts the text encoder truncates and write the plan; run runs the job and
`describe`s its report (the funnel, the reasons, the speed, why it stopped); verify and report
read a finished output. Each returns its exit code (pipeline/errors.py) and imports its heavy
libraries inside, so importing this module stays instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from pipeline.errors import EXIT_INVALID, EXIT_OK, ConfigError, JobError, StorageError

if TYPE_CHECKING:
    from pipeline.run.job import RunReport


def _load(args: argparse.Namespace):
    from pipeline.spec.load import load_job

    overrides = {("job", "manifest"): args.manifest, ("job", "styles"): args.styles}
    if getattr(args, "output", None) and args.command == "run":
        overrides[("job", "output")] = args.output
    if getattr(args, "address", None):
        overrides[("cluster", "address")] = args.address
    if getattr(args, "trust_anchors", None) and args.command == "run":
        overrides[("signer", "trust_anchors")] = args.trust_anchors
    return load_job(args.job, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.plan import formats
    from pipeline.plan.build import plan_chunks
    from pipeline.spec.manifest import load_inputs

    cfg = _load(args)
    inputs = load_inputs(cfg)
    _warn(inputs.warnings)
    candidates, long_prompts = 0, []
    for chunk in plan_chunks(inputs, cfg):  # a chunk at a time: a long manifest is never planned whole
        candidates += chunk.num_rows
        long_prompts += _long_prompts(chunk)
    _warn_long_prompts(long_prompts)
    print(f"OK: {inputs.rows} rows, {candidates} candidates, "
          f"{len(inputs.styles)} styles; passthrough columns: {', '.join(inputs.passthrough) or 'none'}")
    if formats.wanted(cfg, inputs.styles):
        by_style = formats.style_formats(cfg, inputs.styles).group_by("style", maintain_order=True).agg("variant")
        which = "; ".join(f"{style or '(no style)'}: {', '.join(names)}" for style, names in by_style.iter_rows())
        print(f"channel formats of each {cfg.formats.source} image, made once it is written: {which}")
    return EXIT_OK


def _warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _long_prompts(plan) -> list[tuple[int, str, str, int, int]]:
    """(row, id, encoder, tokens, window) of each row whose prompt runs past one of its model's
    text encoders' windows (every model of the chunk: styles may name their own)."""
    import pyarrow.compute as pc

    from pipeline.spec.tokens import over_limit, truncated

    first = plan.filter(pc.equal(plan["candidate"], 0))
    long_rows = []
    for model in pc.unique(first["model"]).to_pylist():
        mine = first.filter(pc.equal(first["model"], model))
        for encoder, counts, limit in over_limit(mine["prompt"].to_pylist(), model):
            long_rows += [(r, i, encoder, n, limit) for r, i, n in zip(mine["row"].to_pylist(), mine["id"].to_pylist(),
                                                                      counts, strict=True) if truncated(n, limit)]
    return sorted(long_rows)


def _warn_long_prompts(long_rows: list[tuple[int, str, str, int, int]]) -> None:
    """Prompts past a text encoder's window still run (truncated); say which, by row and encoder."""
    for r, i, encoder, n, limit in long_rows[:20]:
        print(f"warning: row {r} (id {i!r}), column 'prompt': {n} tokens after the style template; the "
              f"text encoder {encoder} reads {limit}, the rest is truncated", file=sys.stderr)
    if len(long_rows) > 20:
        print(f"warning: ... and {len(long_rows) - 20} more long prompts", file=sys.stderr)


def cmd_plan(args: argparse.Namespace) -> int:
    import contextlib
    from collections import Counter

    import polars as pl
    import pyarrow.parquet as pq

    from pipeline.plan import formats
    from pipeline.plan.build import plan_chunks
    from pipeline.review.cost import estimate, format_estimate, shapes
    from pipeline.spec.manifest import load_inputs

    cfg = _load(args)
    candidates, modes, counted, writer, children = 0, Counter(), [], None, 0
    inputs = load_inputs(cfg)
    _warn(inputs.warnings)
    decided = _recorded_decisions(cfg.job.output)
    try:
        with contextlib.ExitStack() as files:  # the writer closes first, then the file becomes --out, whole
            # A chunk at a time: the plan of a long manifest is written and counted, never held whole.
            for chunk in plan_chunks(inputs, cfg, decisions=decided):
                if args.out:
                    writer = writer or files.enter_context(
                        pq.ParquetWriter(files.enter_context(_plan_file(args.out)), chunk.schema))
                    writer.write_table(chunk)
                candidates += chunk.num_rows
                modes.update(chunk["mode"].to_pylist())
                counted.append(shapes(chunk))
                if formats.wanted(cfg, inputs.styles) and (made := formats.expected(chunk, cfg, inputs.styles)).height:
                    counted.append(made)  # planned once judged: counted as they will be
                    children += made["len"].sum()
    except OSError as e:  # planning reads nothing (the inputs were read above): this is --out's
        if not args.out:
            raise
        raise JobError(f"--out {args.out}: cannot write the plan there ({e.strerror or e})") from None
    if args.out:
        print(f"wrote {candidates} candidates to {args.out}")
    else:
        print(f"{candidates} candidates; modes: " + ", ".join(f"{k} {v}" for k, v in modes.items()))
    if children:
        print(f"then {'up to ' if cfg.formats.source == 'approved' else ''}{children} channel format(s) of the "
              "kept images (outpaint), planned once they are judged")
    if cfg.cost is not None:
        print(format_estimate(estimate(pl.concat(counted), cfg), cfg))
    return EXIT_OK


def _plan_file(path: str):
    """Where to write the plan for `--out`: a temp file that becomes `path` only when the whole
    plan is written (`storage.write.staged_file`), so a plan cut short never replaces one that
    was there; JobError naming `path` when it is a folder or its folder does not exist."""
    from pathlib import Path

    from pipeline.storage.write import staged_file

    target = Path(path)
    if target.is_dir() or not target.parent.is_dir():
        why = "Is a directory" if target.is_dir() else "No such file or directory"
        raise JobError(f"--out {path}: cannot write the plan there ({why})")
    return staged_file(target)


def _recorded_decisions(output: str):
    """The reviewer's decisions recorded in the job's output, which its next run plans with
    (refinements, new rounds); none when the output cannot be read from here."""
    from pipeline.review import decisions
    from pipeline.storage.store import Output

    try:
        return decisions.load(Output(output))
    except (OSError, StorageError, ValueError) as e:
        print(f"note: the decisions recorded in {output} are left out: {e}", file=sys.stderr)
        return decisions.Decisions.none()


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.run.job import run_job
    from pipeline.run.progress import Reporter

    try:
        reporter = Reporter(args.log_format)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    cfg = _load(args)
    rows = tuple(r.strip() for r in args.rows.split(",") if r.strip()) if args.rows else ()
    report = run_job(cfg, fresh=args.fresh, backend="in-process" if args.in_process else "ray", rows=rows,
                     reporter=reporter, decisions=args.decisions)
    reporter.end(describe(report), **report.summary, exit_code=report.exit_code, results=report.results,
                 removed_strays=report.strays_removed)
    if reporter.mode != "json":  # in json mode the summary is the run_end event
        print(describe(report))
    return report.exit_code


def describe(report: RunReport) -> str:
    """A run's report as the command line prints it: the funnel, the reasons, the speed, where
    the results are, and why the run stopped early."""
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
    if report.strays_removed:
        lines.append(f"  removed {report.strays_removed} file(s) no results row lists any more (images that lost "
                     "their place or a reviewer rejected, or a killed run's leftovers)")
    if report.stopped:
        lines.append(f"  STOPPED: {report.stopped}")
    lines.append(f"  results: {report.results}")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.review.verify import DEFAULT_SEED, verify_output

    def say(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    problems, checked = verify_output(args.output, args.trust_anchors, workers=args.workers, sample=args.sample,
                                      seed=DEFAULT_SEED if args.seed is None else args.seed, say=say)
    for p in problems[:100]:
        print(p, file=sys.stderr)
    if len(problems) > 100:
        print(f"... and {len(problems) - 100} more", file=sys.stderr)
    print(f"verified {checked} image(s): {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return EXIT_OK if not problems else EXIT_INVALID


def cmd_identify(args: argparse.Namespace) -> int:
    """Each file's record, from its manifest or its watermark; exit 1 when any is not found."""
    import json

    from pipeline.review.identify import describe, identify
    from pipeline.review.verify import MissingAnchors

    missing = [f for f in args.files if not os.path.isfile(f)]
    if missing:
        print(f"identify: no such file: {', '.join(missing)}", file=sys.stderr)
        return EXIT_INVALID
    try:
        found = identify(args.files, args.output, args.trust_anchors)
    except MissingAnchors as e:
        print(f"identify: {e}", file=sys.stderr)
        return EXIT_INVALID
    for r in found:
        print(json.dumps(r.to_dict(), default=str) if args.json else describe(r))
    return EXIT_OK if all(r.found for r in found) else EXIT_INVALID


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from pipeline.run.summary import summarize_results
    from pipeline.storage.layout import RESULTS
    from pipeline.storage.store import Output

    out = Output(args.output)
    if not out.exists(RESULTS):
        print(f"{out.where(RESULTS)}: no results table (has the run finished?)", file=sys.stderr)
        return EXIT_INVALID
    from pipeline.review.report import write_report

    summary = summarize_results(out)  # a batch at a time: the report reads only the columns it shows
    print(json.dumps(summary, indent=2))
    where, problems = write_report(out, funnel=summary)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"wrote {where}", file=sys.stderr)
    return EXIT_OK
