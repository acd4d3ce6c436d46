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

`render` is pure but for the row files it hands to `put` (results + summary + run records →
HTML); `write_report` reads and writes through `Output`, so local and object-storage outputs work
alike.
"""

from __future__ import annotations

import contextlib
import html
import json
import secrets
import time
from collections.abc import Callable
from importlib import resources
from pathlib import Path

import pyarrow as pa

from pipeline.review.charts import brand_svg, funnel_svg, reasons_list, style_svg
from pipeline.review.outlines import make_outlines
from pipeline.review.report_data import build, iter_groups, json_for_script, passthrough_of, report_columns
from pipeline.review.report_data import regenerate_command as regenerate_command
from pipeline.spec import vocabulary
from pipeline.storage.layout import ASSETS, REPORT, SUMMARY, generation_of, report_generation
from pipeline.storage.records import read_results, results_names, run_records
from pipeline.storage.store import Output, as_output

PAGE_ROWS = 24  # row groups per page of the contact sheet


def _thresholds(record: dict) -> dict:
    cfg = record.get("config") or {}
    flt = cfg.get("filter") or {}
    return {"job": cfg.get("source") or None,
            "image_unsafe_threshold": flt.get("image_unsafe_threshold"),
            "prompt_unsafe_threshold": flt.get("prompt_unsafe_threshold")}


def groups_of(results: pa.Table, runs: dict[str, dict], outlines: dict[str, str] | None = None) -> list[dict]:
    """The contact sheet's data as one list (small tables; the report streams `iter_groups`):
    one group per manifest row (its candidates side by side), sorted by style, then manifest row."""
    return list(iter_groups(results, runs, outlines))


def new_generation() -> str:
    """A fresh folder for one report's row files: the time it was written, and a random tail."""
    return report_generation(f"{time.strftime('%Y%m%dT%H%M%S', time.gmtime())}-{secrets.token_hex(4)}")


def render(results: pa.Table, summary: dict, runs: dict[str, dict] | None = None,
           outlines: dict[str, str] | None = None, title: str = "", page_rows: int = PAGE_ROWS,
           put: Callable[[str, bytes], None] | None = None, generation: str | None = None) -> str:
    """The page as one string. Its rows go, as they are made, to `put(rel, bytes)` under
    `generation` (a new one when None); without `put` they are not kept (the figures alone)."""
    runs = {rid: _thresholds(rec) for rid, rec in (runs or {}).items()}
    island, counted = build(results, runs, outlines, generation or new_generation(), put)
    styles = list(counted.by_style)
    data = {**island, "runs": runs, "passthrough": passthrough_of(results), "page_rows": page_rows,
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
    the row files of earlier reports; returns where, and any problems. The figures are the
    results' funnel (`funnel` where the caller counted it), with what `summary.json` adds (brand
    consistency). Without `results`, only the columns the page shows are read."""
    from pipeline.run.summary import summarize, summarize_results

    out = as_output(output)
    summary = funnel or (summarize(results) if results is not None else summarize_results(out))
    if results is None:
        results = read_results(out, report_columns(results_names(out)))
    if out.exists(SUMMARY):
        with contextlib.suppress(ValueError):  # an unreadable summary.json: the results' own funnel
            summary = {**summary, **{k: v for k, v in json.loads(out.get(SUMMARY)).items() if k not in summary}}
    outlines, problems = make_outlines(results, out)
    runs = {r.run_id: r.record for r in run_records(out)}
    generation = new_generation()
    page = render(results, summary, runs, outlines, title=f"{summary.get('job') or ''} · {out.uri}",
                  put=out.put, generation=generation)
    out.put(REPORT, page.encode("utf-8"))  # last: it names a generation whose files are all there
    for old in {generation_of(rel) for rel in out.files(ASSETS)} - {None, generation}:
        out.delete_prefix(old)
    return out.where(REPORT), problems
