"""`report.html`: one self-contained review page for an output folder or prefix.

The page works offline and can be copied or served as is: inline CSS, JS and SVG charts
(`charts.py`), the candidates as a JSON data island, images referenced by their relative
`images/xx/<id>.png` paths (a candidate with no image by its preview, `_previews/xx/<id>.webp`),
and one small outline PNG per staged product in `report_assets/` (`outlines.py`). A click on an
image opens the row's candidates side by side (a modal dialog), each with its rank, status,
reason and CLIP score. The browser builds one page of row groups at a time, so a 10,000-row
table opens as fast as a small one.

`render` is pure (results + summary + run records → HTML); `write_report` reads and writes
through `Output`, so local and object-storage outputs work alike.
"""

from __future__ import annotations

import contextlib
import html
import json
import shlex
from importlib import resources
from pathlib import Path

import pyarrow as pa

from pipeline.judge.outcome import with_reason_codes
from pipeline.review.charts import brand_svg, funnel_svg, reasons_list, style_svg
from pipeline.review.outlines import make_outlines
from pipeline.run.summary import NO_STYLE
from pipeline.spec import schema, vocabulary
from pipeline.storage.layout import REPORT, SUMMARY
from pipeline.storage.records import read_results, run_records
from pipeline.storage.store import Output, as_output

PAGE_ROWS = 24  # row groups per page of the contact sheet

# Per-candidate columns the page shows (short keys keep the data island small at 10k rows).
CANDIDATE_KEYS = {"candidate": "k", "item_id": "item", "seed": "seed", "model": "model", "path": "path",
                  "preview_path": "preview",
                  "status": "status", "reason": "reason", "reason_code": "code", "rank": "rank", "selected": "sel",
                  "clip_score": "clip", "clip_threshold": "clip_thr", "image_unsafe_score": "img_unsafe",
                  "prompt_unsafe_score": "prompt_unsafe", "moderation": "moderation", "c2pa_state": "c2pa",
                  "run_id": "run", "width": "w", "height": "h", "decision": "decision", "note": "note",
                  "parent": "parent", "source_prompt": "words", "strength": "strength", "variant": "fmt"}
ROW_KEYS = ("id", "row", "style", "source_prompt", "prompt", "negative_prompt", "mode", "init_image", "mask",
            "steps", "guidance_scale", "strength")


def _json_for_script(obj) -> str:
    """JSON safe inside a <script> element: no `</script>`, `<!--` or stray `&` can end it."""
    text = json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _plain(value):
    """A passthrough value as the page shows it (lists and structs as compact JSON)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def _thresholds(record: dict) -> dict:
    cfg = record.get("config") or {}
    flt = cfg.get("filter") or {}
    return {"job": cfg.get("source") or None,
            "image_unsafe_threshold": flt.get("image_unsafe_threshold"),
            "prompt_unsafe_threshold": flt.get("prompt_unsafe_threshold")}


def regenerate_command(job: str | None, row_id: str) -> str:
    return f"python -m pipeline run {shlex.quote(job or 'JOB.toml')} --rows {shlex.quote(row_id)} --output OTHER_DIR"


def groups_of(results: pa.Table, runs: dict[str, dict], outlines: dict[str, str] | None = None) -> list[dict]:
    """The contact sheet's data: one group per manifest row (its candidates side by side), sorted
    by style, then manifest row."""
    outlines = outlines or {}
    passthrough = [c for c in results.column_names if c not in schema.RESERVED_NAMES]
    results = with_reason_codes(results)  # results written before the column: by their code
    names = [c for c in {*CANDIDATE_KEYS, *ROW_KEYS, *passthrough} if c in results.column_names]
    by_id: dict[str, dict] = {}
    for r in results.select(names).to_pylist():
        g = by_id.get(r["id"])
        if g is None:
            g = by_id[r["id"]] = {k: r[k] for k in ROW_KEYS if r.get(k) is not None}
            g["style"] = g.get("style") or NO_STYLE
            g["pass"] = {c: _plain(r[c]) for c in passthrough}
            g["c"] = []
        c = {short: r[col] for col, short in CANDIDATE_KEYS.items() if r.get(col) is not None}  # nulls left out
        if "seed" in c:
            c["seed"] = str(c["seed"])  # 63 bits: past what a JS number holds exactly
        if "parent" not in c or "fmt" in c:  # a refinement's own words and strength; the others share the row's
            c.pop("words", None)
            c.pop("strength", None)
        g["c"].append(c)
    groups = sorted(by_id.values(), key=lambda g: (g["style"] == NO_STYLE, g["style"], g.get("row", 0)))
    for g in groups:
        g["c"].sort(key=lambda c: c.get("k", 0))
        run = next((c["run"] for c in reversed(g["c"]) if c.get("run")), None)
        g["cmd"] = regenerate_command((runs.get(run) or {}).get("job"), g["id"])
        if g["id"] in outlines:
            g["outline"] = outlines[g["id"]]
    return groups


def render(results: pa.Table, summary: dict, runs: dict[str, dict] | None = None,
           outlines: dict[str, str] | None = None, title: str = "", page_rows: int = PAGE_ROWS) -> str:
    """The whole page as one string (pure: no reads, no writes)."""
    runs = {rid: _thresholds(rec) for rid, rec in (runs or {}).items()}
    groups = groups_of(results, runs, outlines)
    styles = list(dict.fromkeys(g["style"] for g in groups))
    passthrough = [c for c in results.column_names if c not in schema.RESERVED_NAMES]
    data = {"groups": groups, "runs": runs, "passthrough": passthrough, "page_rows": page_rows,
            "summary": {k: v for k, v in summary.items() if isinstance(v, int | float | str) or v is None}}
    counts = " · ".join(f'{k} <b data-summary="{k}">{int(summary.get(k) or 0)}</b>'
                        for k in ("planned", *vocabulary.STATUSES, vocabulary.PENDING))
    template = resources.files("pipeline.review").joinpath("report_template.html").read_text(encoding="utf-8")
    parts = {"TITLE": html.escape(title or "asset pipeline report"), "COUNTS": counts,
             "FUNNEL": funnel_svg(summary), "STYLES": style_svg(groups), "BRAND": brand_svg(summary, styles),
             "REASONS": reasons_list(summary), "DATA": _json_for_script(data)}
    for key, value in parts.items():
        template = template.replace(f"<!--{key}-->", value)
    return template




def write_report(output: Output | Path | str, results: pa.Table | None = None) -> tuple[str, list[str]]:
    """Write `report.html` (and its outlines) into the output; returns where, and any problems.
    The figures are the results' funnel, with what `summary.json` adds (brand consistency)."""
    from pipeline.run.summary import summarize

    out = as_output(output)
    results = results if results is not None else read_results(out)
    summary = summarize(results)
    if out.exists(SUMMARY):
        with contextlib.suppress(ValueError):  # an unreadable summary.json: the results' own funnel
            summary = {**summary, **{k: v for k, v in json.loads(out.get(SUMMARY)).items() if k not in summary}}
    outlines, problems = make_outlines(results, out)
    runs = {r.run_id: r.record for r in run_records(out)}
    page = render(results, summary, runs, outlines, title=f"{summary.get('job') or ''} · {out.uri}")
    out.put(REPORT, page.encode("utf-8"))
    return out.where(REPORT), problems

