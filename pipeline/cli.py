"""Command line: `python -m pipeline run|validate|plan|verify|report`.

Exit codes (scheduled jobs rely on them, pipeline/errors.py defines them): 0 success; 1 invalid
job, input, signer or a failed verification; 2 the run stopped early (error budget, or it lost
its output to another run) or left candidates pending.
Heavy libraries load only inside the commands that need them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import TYPE_CHECKING

from pipeline.errors import EXIT_INCOMPLETE, EXIT_INVALID, EXIT_OK, ConfigError, JobError, PipelineError, StorageError

if TYPE_CHECKING:
    from pipeline.run.job import RunReport


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec (jobs/*.toml)")
    p.add_argument("--manifest", help="manifest URI (overrides [job].manifest)")
    p.add_argument("--styles", help="styles table URI (overrides [job].styles)")


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate, filter, sign and write; resumes an interrupted run")
    _job_args(run)
    run.add_argument("--output", help="output folder (overrides [job].output)")
    run.add_argument("--address", help="Ray cluster address (overrides [cluster].address); 'auto' to join")
    run.add_argument("--fresh", action="store_true", help="discard earlier results in the output folder")
    run.add_argument("--rows", help="comma-separated manifest ids: regenerate only these rows")
    run.add_argument("--decisions", metavar="FILE",
                     help="a reviewer's decisions (CSV, JSON or Parquet exported from report.html: item_id, "
                          "decision approve|reject|refine, note, prompt, strength) to apply; kept for later runs")
    run.add_argument("--in-process", action="store_true", help="run the stages without Ray (debugging)")
    run.add_argument("--log-format", default=os.environ.get("ASSET_PIPELINE_LOG_FORMAT", "auto"),
                     choices=("auto", "text", "json"),
                     help="auto: a live bar when stderr is a terminal, else a progress line every "
                     "$ASSET_PIPELINE_LOG_INTERVAL seconds (default 10); text: those lines always; json: one JSON "
                     "object a line on stderr, the summary last, nothing on stdout (default: "
                     "$ASSET_PIPELINE_LOG_FORMAT, else auto)")
    val = sub.add_parser("validate", help="check the job, manifest and styles; never generates")
    _job_args(val)
    plan = sub.add_parser("plan", help="write the plan (one row per candidate) without generating")
    _job_args(plan)
    plan.add_argument("--out", help="write the plan as Parquet here (default: print a summary)")
    ver = sub.add_parser("verify", help="re-read every written image: C2PA manifest and sha256")
    ver.add_argument("output", help="output folder of a run")
    ver.add_argument("--trust-anchors", help="PEM file of trusted CAs (default: the run's demo CA or its "
                     "[signer].trust_anchors); a missing file is an error")
    rep = sub.add_parser("report", help="write DIR/report.html (contact sheet, charts, filters, decisions) and "
                         "print the funnel and reasons")
    rep.add_argument("output", help="output folder or prefix (s3://...) of a run")
    return ap


def _load(args: argparse.Namespace):
    from pipeline.spec.load import load_job

    overrides = {("job", "manifest"): args.manifest, ("job", "styles"): args.styles}
    if getattr(args, "output", None) and args.command == "run":
        overrides[("job", "output")] = args.output
    if getattr(args, "address", None):
        overrides[("cluster", "address")] = args.address
    return load_job(args.job, overrides)


def cmd_validate(args: argparse.Namespace) -> int:
    from pipeline.plan.build import plan_chunks
    from pipeline.spec.manifest import load_inputs

    cfg = _load(args)
    inputs = load_inputs(cfg)
    _warn(inputs.warnings)
    candidates, long_prompts = 0, []
    for chunk in plan_chunks(inputs, cfg):  # a chunk at a time: a long manifest is never planned whole
        candidates += chunk.num_rows
        long_prompts += _long_prompts(chunk, cfg.models.diffusion)
    _warn_long_prompts(long_prompts)
    print(f"OK: {len(inputs.manifest)} rows, {candidates} candidates, "
          f"{len(inputs.styles)} styles; passthrough columns: {', '.join(inputs.passthrough) or 'none'}")
    return EXIT_OK


def _warn(warnings: tuple[str, ...]) -> None:
    for w in warnings:
        print(f"warning: {w}", file=sys.stderr)


def _long_prompts(plan, model: str) -> list[tuple[int, str, int, int]]:
    """(row, id, tokens, limit) of each row whose prompt runs past the text encoder's window."""
    from pipeline.spec.tokens import over_limit, truncated

    first = plan.filter(plan["candidate"].to_numpy() == 0)
    found = over_limit(first["prompt"].to_pylist(), model)
    if found is None:
        return []
    counts, limit = found
    return [(r, i, n, limit) for r, i, n in zip(first["row"].to_pylist(), first["id"].to_pylist(), counts,
                                                strict=True) if truncated(n, limit)]


def _warn_long_prompts(long_rows: list[tuple[int, str, int, int]]) -> None:
    """Prompts past the text encoder's window still run (truncated); say which, by row."""
    for r, i, n, limit in long_rows[:20]:
        print(f"warning: row {r} (id {i!r}), column 'prompt': {n} tokens after the style template; the "
              f"text encoder reads {limit}, the rest is truncated", file=sys.stderr)
    if len(long_rows) > 20:
        print(f"warning: ... and {len(long_rows) - 20} more long prompts", file=sys.stderr)


def cmd_plan(args: argparse.Namespace) -> int:
    from collections import Counter

    import polars as pl

    from pipeline.plan.build import plan_chunks
    from pipeline.review.cost import estimate, format_estimate, shapes
    from pipeline.spec.manifest import load_inputs

    cfg = _load(args)
    candidates, modes, counted, writer = 0, Counter(), [], None
    inputs = load_inputs(cfg)
    _warn(inputs.warnings)
    try:
        # A chunk at a time: the plan of a long manifest is written and counted, never held whole.
        for chunk in plan_chunks(inputs, cfg, decisions=_recorded_decisions(cfg.job.output)):
            if args.out:
                writer = writer or _plan_writer(args.out, chunk.schema)
                writer.write_table(chunk)
            candidates += chunk.num_rows
            modes.update(chunk["mode"].to_pylist())
            counted.append(shapes(chunk))
    finally:
        if writer:
            writer.close()
    if args.out:
        print(f"wrote {candidates} candidates to {args.out}")
    else:
        print(f"{candidates} candidates; modes: " + ", ".join(f"{k} {v}" for k, v in modes.items()))
    if cfg.cost is not None:
        print(format_estimate(estimate(pl.concat(counted), cfg), cfg))
    return EXIT_OK


def _plan_writer(path: str, schema):
    """A Parquet writer of the plan at `path`, or JobError naming it (a folder, no such folder)."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetWriter(path, schema)
    except OSError as e:
        raise JobError(f"--out {path}: cannot write the plan there ({e.strerror or e})") from None


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
                 removed_strays=len(report.removed_strays))
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
    if report.removed_strays:
        lines.append(f"  removed {len(report.removed_strays)} file(s) no results row lists any more (images that lost "
                     "their place or a reviewer rejected, or a killed run's leftovers)")
    if report.stopped:
        lines.append(f"  STOPPED: {report.stopped}")
    lines.append(f"  results: {report.results}")
    return "\n".join(lines)


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.review.verify import verify_output

    problems, checked = verify_output(args.output, args.trust_anchors)
    for p in problems[:100]:
        print(p, file=sys.stderr)
    if len(problems) > 100:
        print(f"... and {len(problems) - 100} more", file=sys.stderr)
    print(f"verified {checked} image(s): {'OK' if not problems else f'{len(problems)} problem(s)'}")
    return EXIT_OK if not problems else EXIT_INVALID


def cmd_report(args: argparse.Namespace) -> int:
    import json

    from pipeline.errors import EXIT_INVALID, EXIT_OK
    from pipeline.run.summary import summarize
    from pipeline.storage.layout import RESULTS
    from pipeline.storage.records import read_results
    from pipeline.storage.store import Output

    out = Output(args.output)
    if not out.exists(RESULTS):
        print(f"{out.where(RESULTS)}: no results table (has the run finished?)", file=sys.stderr)
        return EXIT_INVALID
    from pipeline.review.report import write_report

    results = read_results(out)
    summary = summarize(results)
    print(json.dumps(summary, indent=2))
    where, problems = write_report(out, results)
    for p in problems:
        print(f"warning: {p}", file=sys.stderr)
    print(f"wrote {where}", file=sys.stderr)
    return EXIT_OK


COMMANDS = {"run": cmd_run, "validate": cmd_validate, "plan": cmd_plan, "verify": cmd_verify,
            "report": cmd_report}


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return COMMANDS[args.command](args)
    except PipelineError as e:  # LockLost (exit 2): another run holds the output now; it committed nothing since
        _error(args, f"{'stopped' if e.exit_code == EXIT_INCOMPLETE else 'error'}: {e}")
        return e.exit_code
    except KeyboardInterrupt:
        _error(args, "interrupted: rerun the same command to resume")
        return 130


def _error(args: argparse.Namespace, msg: str) -> None:
    """Why the command stopped, on stderr: a JSON `error` event when the run logs JSON."""
    if getattr(args, "log_format", None) == "json":
        from pipeline.run.progress import json_line

        msg = json_line("error", "error", msg=msg.removeprefix("error: "))
    print(msg, file=sys.stderr, flush=True)


if __name__ == "__main__":
    sys.exit(main())
