"""Command line: `python -m pipeline run|validate|plan|verify|identify|report`.

The command line's surface: its arguments, and how an error ends a command (one message on
stderr, no traceback, its exit code). What each command does is in commands.py.
Exit codes (scheduled jobs rely on them, pipeline/errors.py defines them): 0 success; 1 invalid
job, input, model, signer or a failed verification; 2 the run stopped early (error budget, or it
lost its output to another run) or left candidates pending.
Heavy libraries load only inside the commands that need them, so `--help` is instant.
"""

from __future__ import annotations

import argparse
import os
import sys

from pipeline import commands
from pipeline.errors import EXIT_INCOMPLETE, PipelineError


def _job_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("job", help="job spec (jobs/*.toml)")
    p.add_argument("--manifest", help="manifest URI (overrides [job].manifest)")
    p.add_argument("--styles", help="styles table URI (overrides [job].styles)")


def _positive(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"a whole number of at least 1, got {text!r}")
    return int(text)


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="generate, filter, sign and write; resumes an interrupted run")
    _job_args(run)
    run.add_argument("--output", help="output folder (overrides [job].output)")
    run.add_argument("--address", help="Ray cluster address (overrides [cluster].address); 'auto' to join")
    run.add_argument("--trust-anchors", metavar="FILE",
                     help="PEM file of CAs the signer's self-test and read-back trust "
                     "(overrides [signer].trust_anchors)")
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
    ver = sub.add_parser("verify", help="re-read every written image (or a sample): C2PA manifest, sha256 "
                         "and watermark; progress on stderr for large outputs")
    ver.add_argument("output", help="output folder of a run")
    ver.add_argument("--trust-anchors", help="PEM file of trusted CAs (default: the run's demo CA or its "
                     "[signer].trust_anchors); a missing file is an error")
    ver.add_argument("--workers", type=_positive, metavar="N",
                     help="images read and checked at once, on threads (default: one a core; on object "
                     "storage cores + 4, at most 32)")
    ver.add_argument("--sample", type=_positive, metavar="N",
                     help="check N images drawn at random from those listed, not all (files nothing lists "
                     "are still found)")
    ver.add_argument("--seed", type=int, default=None, metavar="S",
                     help="the sample's seed (default: a fixed one; printed): the same seed draws the same images")
    ide = sub.add_parser("identify", help="which output, row and item an image came from: by its manifest, or "
                         "by its watermark where a platform stripped the metadata")
    ide.add_argument("files", nargs="+", metavar="FILE", help="images to identify")
    ide.add_argument("--output", action="append", required=True, metavar="DIR_OR_PREFIX",
                     help="an output folder or prefix (s3://...) to look in; repeat for several")
    ide.add_argument("--json", action="store_true", help="one JSON object a line, a file each")
    ide.add_argument("--trust-anchors", help="PEM file of trusted CAs (default: each output's own)")
    rep = sub.add_parser("report", help="write DIR/report.html (contact sheet, charts, filters, decisions) and "
                         "print the funnel and reasons")
    rep.add_argument("output", help="output folder or prefix (s3://...) of a run")
    return ap


COMMANDS = {"run": commands.cmd_run, "validate": commands.cmd_validate, "plan": commands.cmd_plan,
            "verify": commands.cmd_verify, "identify": commands.cmd_identify, "report": commands.cmd_report}


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
