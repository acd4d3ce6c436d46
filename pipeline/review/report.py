"""`report.html`: one self-contained review page for an output folder or prefix.

The page works offline and can be copied or served as is: inline CSS, JS and SVG charts
(`charts.py`), images referenced by their relative `images/xx/<id>.png` paths (a candidate with
no image by its preview, `_previews/xx/<id>.webp`), and one small outline PNG per staged product
in `report_assets/` (`outlines.py`). A click on an image opens the row's candidates side by
side (a modal dialog), each with its rank, status, reason and CLIP score.

The page itself holds what it shows before any row (counts, charts, the filters' choices with
their counts); the rows live in script files of one report generation under `report_assets/`
(`report_data.py`) that the browser loads a page of the contact sheet at a time, so a report of
a million rows opens as fast as a small one. Filters and their counts are exact over every row
(an index of styles, statuses and reasons); a search loads the search text (up front when it is
small, at the first search otherwise). The generation's files are written first and
`report.html` last, and only then are older generations removed: report.html only ever names a
complete set.

Memory is flat in the number of candidates (issue 20): the results are read a batch at a time,
never whole, put in display order through a temp file (`report_order`), and the outlines are
drawn as the batches pass. The temp files live in the run's temp folder, or in one of the
report's own that a later run removes should the report be killed (`storage.scratch`).

`render` is pure but for the row files it writes to `output` (results + summary + run records →
HTML); `write_report` reads and writes through `Output`, so local and object-storage outputs work
alike.
"""

from __future__ import annotations

import contextlib
import html
import json
import secrets
import tempfile
import time
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pyarrow as pa

from pipeline.review.charts import brand_svg, funnel_svg, reasons_list, style_svg
from pipeline.review.outlines import Outlines
from pipeline.review.report_data import build, iter_groups, json_for_script, passthrough_of
from pipeline.review.report_data import regenerate_command as regenerate_command
from pipeline.review.report_order import Results
from pipeline.spec import vocabulary
from pipeline.storage.layout import ASSETS, REPORT, SUMMARY, generation_of, report_generation
from pipeline.storage.records import run_records
from pipeline.storage.scratch import Scratch
from pipeline.storage.store import Output, as_output

PAGE_ROWS = 24  # row groups per page of the contact sheet


def _thresholds(record: dict) -> dict:
    cfg = record.get("config") or {}
    flt = cfg.get("filter") or {}
    return {"job": cfg.get("source") or None,
            "image_unsafe_threshold": flt.get("image_unsafe_threshold"),
            "prompt_unsafe_threshold": flt.get("prompt_unsafe_threshold")}


@contextlib.contextmanager
def temp_folder(output: Output | None = None) -> Iterator[Path]:
    """A folder for the report's temp files, removed after: in the output's temp folder when a
    run set one (`Output.scratch`), else a `Scratch` of the report's own."""
    if output is not None and output.scratch is not None:
        with tempfile.TemporaryDirectory(prefix="report-", dir=output.scratch) as folder:
            yield Path(folder)
        return
    scratch = Scratch(f"report-{secrets.token_hex(4)}")
    try:
        yield scratch.path
    finally:
        scratch.close()


def groups_of(results: pa.Table, runs: dict[str, dict]) -> list[dict]:
    """The contact sheet's data as one list (small tables; the report streams `iter_groups`):
    one group per manifest row (its candidates side by side), sorted by style, then manifest row."""
    with temp_folder() as folder:
        return list(iter_groups(Results.of_table(results), runs, folder))


def new_generation() -> str:
    """A fresh folder for one report's row files: the time it was written, and a random tail."""
    return report_generation(f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}")


def render(results: pa.Table | Results, summary: dict, runs: dict[str, dict] | None = None,
           outlines: Outlines | None = None, title: str = "", page_rows: int = PAGE_ROWS,
           output: Output | None = None, generation: str | None = None) -> str:
    """The page as one string. Its rows go, as they are made, to `output` under `generation` (a
    new one when None); without `output` they are not kept (the figures alone). `outlines`
    draws the staged rows' outlines as the results pass."""
    results = Results.of_table(results) if isinstance(results, pa.Table) else results
    runs = {rid: _thresholds(rec) for rid, rec in (runs or {}).items()}
    with temp_folder(output) as folder:
        island, counted = build(results, runs, outlines, generation or new_generation(), output, folder)
    styles = list(counted.by_style)
    data = {**island, "runs": runs, "passthrough": passthrough_of(results.names), "page_rows": page_rows,
            "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str) or v is None}}
    counts = " · ".join(f'{k} <b data-summary="{k}">{int(summary.get(k) or 0)}</b>'
                        for k in ("planned", *vocabulary.STATUSES, vocabulary.PENDING))
    template = resources.files("pipeline.review").joinpath("report_template.html").read_text(encoding="utf-8")
    parts = {"TITLE": html.escape(title or "asset pipeline report"), "COUNTS": counts,
             "FUNNEL": funnel_svg(summary), "STYLES": style_svg(counted.by_style, counted.clip),
             "BRAND": brand_svg(summary, styles), "REASONS": reasons_list(summary), "DATA": json_for_script(data)}
    for key, value in parts.items():
        template = template.replace(f"<!--{key}-->", value)
    return template


def write_report(output: Output | Path | str, results: pa.Table | None = None,
                 funnel: dict | None = None) -> tuple[str, list[str]]:
    """Write `report.html` (its row files first, and its outlines) into the output, then remove
    the row files and outlines of earlier reports; returns where, and any problems. The figures
    are the results' funnel (`funnel` where the caller counted it), with what `summary.json` adds
    (brand consistency). Without `results`, `results.parquet` is streamed, a batch at a time."""
    from pipeline.run.summary import summarize, summarize_results

    out = as_output(output)
    summary = funnel or (summarize(results) if results is not None else summarize_results(out))
    if out.exists(SUMMARY):
        with contextlib.suppress(ValueError):  # an unreadable summary.json: the results' own funnel
            summary = {**summary, **{k: v for k, v in json.loads(out.get(SUMMARY)).items() if k not in summary}}
    runs = {r.run_id: r.record for r in run_records(out)}
    outlines, generation = Outlines(out), new_generation()
    page = render(results if results is not None else Results.of_output(out), summary, runs, outlines,
                  title=f"{summary.get('job') or ''} · {out.uri}", output=out, generation=generation)
    out.put(REPORT, page.encode("utf-8"))  # last: it names a generation whose files are all there
    for old in {generation_of(rel) for rel in out.files(ASSETS)} - {None, generation}:
        out.delete_prefix(old)
    outlines.close()
    return out.where(REPORT), outlines.problems
