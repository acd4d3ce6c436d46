"""`report.html`: one self-contained review page for an output folder or prefix.

The page works offline and can be copied or served as is: inline CSS, JS and SVG charts, the
candidates as a JSON data island, images referenced by their relative `images/xx/<id>.png`
paths, and one small outline PNG per staged product in `report_assets/` (made here from the
row's mask or the product's alpha, fitted exactly as generation fitted it). The browser builds
one page of row groups at a time, so a 10,000-row table opens as fast as a small one.

`render` is pure (results + summary + run records → HTML); `write_report` reads and writes
through `Output`, so local and object-storage outputs work alike.
"""

from __future__ import annotations

import contextlib
import html
import io
import json
import shlex
from collections import Counter, defaultdict
from importlib import resources
from pathlib import Path

import pyarrow as pa

from pipeline.plan.identity import digest, encode
from pipeline.run.summary import FUNNEL, NO_STYLE
from pipeline.spec import schema
from pipeline.storage.layout import ASSETS, REPORT, SUMMARY
from pipeline.storage.records import read_results, run_records
from pipeline.storage.store import Output, as_output

PAGE_ROWS = 24  # row groups per page of the contact sheet

# Per-candidate columns the page shows (short keys keep the data island small at 10k rows).
CANDIDATE_KEYS = {"candidate": "k", "item_id": "item", "seed": "seed", "model": "model", "path": "path",
                  "status": "status", "reason": "reason", "rank": "rank", "selected": "sel",
                  "clip_score": "clip", "clip_threshold": "clip_thr", "image_unsafe_score": "img_unsafe",
                  "prompt_unsafe_score": "prompt_unsafe", "moderation": "moderation", "c2pa_state": "c2pa",
                  "run_id": "run", "width": "w", "height": "h", "decision": "decision", "note": "note",
                  "parent": "parent", "source_prompt": "words", "strength": "strength"}
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
        if "parent" not in c:  # a refinement's own words and strength; the others share the row's
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


# ── charts: inline SVG, made here ─────────────────────────────────────────────
COLOURS = {"written": "#2e7d32", "rejected": "#c77700", "error": "#c62828", "pending": "#777"}


def _bars(rows: list[tuple[str, int | float, str]], total: float, unit: str = "", testid: str = "") -> str:
    """Horizontal bars: (label, value, data key); values scaled to `total`."""
    width, label_w, bar_h, gap = 560, 170, 20, 6
    height = len(rows) * (bar_h + gap) + gap
    out = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           f'data-testid="{testid}">']
    for i, (label, value, key) in enumerate(rows):
        y = gap + i * (bar_h + gap)
        w = 0 if not total else max(1.0, (width - label_w - 70) * float(value) / total) if value else 0
        text = f"{value:.3f}" if isinstance(value, float) else f"{value}"
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(label)}</text>'
                   f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2"/>'
                   f'<text x="{label_w + w + 6:.1f}" y="{y + 15}" data-count="{html.escape(key)}">'
                   f'{html.escape(text)}{unit}</text>')
    out.append("</svg>")
    return "".join(out)


def funnel_svg(summary: dict) -> str:
    steps = [("planned", summary.get("planned", 0))] + [(s, summary.get(s, 0)) for s in FUNNEL]
    return _bars([(s.replace("_", " "), int(v or 0), s) for s, v in steps], summary.get("planned") or 0,
                 testid="funnel")


def style_svg(groups: list[dict]) -> str:
    """Per style: candidates by status as one stacked bar, and the mean CLIP score of the kept."""
    counts: dict[str, Counter] = defaultdict(Counter)
    clip: dict[str, list[float]] = defaultdict(list)
    for g in groups:
        for c in g["c"]:
            counts[g["style"]][c.get("status", "pending")] += 1
            if c.get("status") == schema.WRITTEN and c.get("clip") is not None:
                clip[g["style"]].append(c["clip"])
    styles = list(counts)
    most = max((sum(c.values()) for c in counts.values()), default=0)
    width, label_w, bar_h, gap = 560, 170, 20, 6
    height = len(styles) * (bar_h + gap) + gap + 22
    out = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'data-testid="styles-chart">']
    for i, style in enumerate(styles):
        y, x = gap + i * (bar_h + gap), float(label_w)
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(style)}</text>')
        for status in ("written", "rejected", "error", "pending"):
            n = counts[style][status]
            if not n:
                continue
            w = (width - label_w - 110) * n / most
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{bar_h}" fill="{COLOURS[status]}">'
                       f'<title>{html.escape(style)}: {n} {status}</title></rect>')
            x += w
        mean = f" · clip {sum(clip[style]) / len(clip[style]):.2f}" if clip[style] else ""
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{sum(counts[style].values())}{mean}</text>')
    y = gap + len(styles) * (bar_h + gap) + 12
    x = label_w
    for status, colour in COLOURS.items():
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14}" y="{y}">{status}</text>')
        x += 90
    out.append("</svg>")
    return "".join(out)


def brand_svg(summary: dict, styles: list[str]) -> str:
    """`summary.json`'s `brand_consistency` per style, or "not measured" where it is absent."""
    measured = summary.get("brand_consistency") or {}  # style → {"images", "mean_pairwise_cosine"}
    keys = sorted(set(styles) | set(measured), key=lambda s: (s == NO_STYLE, s))
    width, label_w, bar_h, gap = 560, 170, 20, 6
    height = max(1, len(keys)) * (bar_h + gap) + gap
    out = [f'<svg class="chart" role="img" width="{width}" height="{height}" viewBox="0 0 {width} {height}" '
           'data-testid="brand-chart">']
    for i, style in enumerate(keys):
        y = gap + i * (bar_h + gap)
        figure = measured.get(style) or {}
        value = figure.get("mean_pairwise_cosine")
        out.append(f'<text x="{label_w - 6}" y="{y + 15}" text-anchor="end">{html.escape(style)}</text>')
        if value is None:
            why = f"{figure['images']} image: no pair to compare" if figure.get("images") else "not measured"
            out.append(f'<text x="{label_w}" y="{y + 15}" class="muted">{why}</text>')
        else:
            w = (width - label_w - 70) * min(max(value, 0.0), 1.0)
            out.append(f'<rect x="{label_w}" y="{y}" width="{w:.1f}" height="{bar_h}" rx="2"/>'
                       f'<text x="{label_w + w + 6:.1f}" y="{y + 15}">{value:.3f}</text>')
        if figure.get("reference_similarity") is not None:  # how close to the style's reference image
            out.append(f'<text x="{width - 4}" y="{y + 15}" text-anchor="end" class="muted">'
                       f'ref {figure["reference_similarity"]:.3f}</text>')
    out.append("</svg>")
    return "".join(out)


def reasons_list(summary: dict) -> str:
    reasons = summary.get("reasons") or {}
    if not reasons:
        return '<p class="muted">no rejections or errors</p>'
    items = "".join(f"<li><code>{html.escape(str(k))}</code> <b data-reason=\"{html.escape(str(k))}\">{int(v)}</b></li>"
                    for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return f"<ul class=\"reasons\">{items}</ul>"


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
                        for k in ("planned", "written", "rejected", "error", "pending"))
    template = resources.files("pipeline.review").joinpath("report_template.html").read_text(encoding="utf-8")
    parts = {"TITLE": html.escape(title or "asset pipeline report"), "COUNTS": counts,
             "FUNNEL": funnel_svg(summary), "STYLES": style_svg(groups), "BRAND": brand_svg(summary, styles),
             "REASONS": reasons_list(summary), "DATA": _json_for_script(data)}
    for key, value in parts.items():
        template = template.replace(f"<!--{key}-->", value)
    return template


# ── mask outlines for staged rows ─────────────────────────────────────────────
def outline_png(init_image: str, mask: str, width: int, height: int) -> bytes:
    """A transparent PNG the size of the image with the kept product's edge drawn in magenta:
    the keep mask that generation used (same fitting), thresholded at half, its boundary."""
    import numpy as np
    from PIL import Image

    from pipeline.stages.generate import prepare_inputs

    _, keep = prepare_inputs(init_image, mask, width, height)
    inside = np.asarray(keep) >= 128
    pad = np.pad(inside, 1, constant_values=False)
    edge = inside & ~(pad[:-2, 1:-1] & pad[2:, 1:-1] & pad[1:-1, :-2] & pad[1:-1, 2:])
    rgba = np.zeros((*inside.shape, 4), np.uint8)
    rgba[edge] = (255, 0, 255, 255)
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def make_outlines(results: pa.Table, out: Output) -> tuple[dict[str, str], list[str]]:
    """One outline per staged row (inpainting from a product with a mask or alpha), written to
    `report_assets/`; returns {row id: relative path} and the rows whose inputs could not be read."""
    wanted = ["id", "mode", "init_image", "mask", "width", "height"]
    if not set(wanted) <= set(results.column_names):
        return {}, []
    seen: dict[tuple, str] = {}
    outlines, problems = {}, []
    for r in results.select(wanted).to_pylist():
        if r["id"] in outlines or r["mode"] != "inpaint" or not r["init_image"] or not r["mask"]:
            continue
        key = (r["init_image"], r["mask"], r["width"], r["height"])
        if key not in seen:
            rel = f"{ASSETS}/outline-{digest(encode(*key), 10).hex()}.png"
            try:
                out.put(rel, outline_png(*key))
            except Exception as e:  # an input moved or unreadable: the report still opens
                problems.append(f"row {r['id']!r}: no mask outline ({type(e).__name__}: {e})")
                seen[key] = ""
                continue
            seen[key] = rel
        if seen[key]:
            outlines[r["id"]] = seen[key]
    for stale in out.files(ASSETS) - set(outlines.values()):  # outlines of an earlier report
        out.delete(stale)
    return outlines, problems


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

