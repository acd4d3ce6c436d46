"""The report's charts: inline SVG made here, so the page needs no chart library and no network.

The funnel, candidates per style by status, brand consistency per style, and the reason counts.
Each element carries a `data-*` key the browser tests read the figures from.
"""

from __future__ import annotations

import html
from collections import Counter

from pipeline.run.summary import FUNNEL, NO_STYLE
from pipeline.spec import vocabulary

COLOURS = {vocabulary.WRITTEN: "#2e7d32", vocabulary.REJECTED: "#c77700", vocabulary.ERROR: "#c62828",
           vocabulary.PENDING: "#777"}
WIDTH, LABEL_W, BAR_H, GAP = 560, 170, 20, 6  # every chart's geometry (px): one column of bars


def _svg(height: int, testid: str, parts: list[str]) -> str:
    """One chart: the SVG element, `WIDTH` wide, around `parts`."""
    return (f'<svg class="chart" role="img" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" '
            f'data-testid="{testid}">' + "".join(parts) + "</svg>")


def _label(y: int, text: str) -> str:
    """A bar's name, right-aligned left of the bars."""
    return f'<text x="{LABEL_W - 6}" y="{y + 15}" text-anchor="end">{html.escape(text)}</text>'


def _bars(rows: list[tuple[str, int | float, str]], total: float, unit: str = "", testid: str = "") -> str:
    """Horizontal bars: (label, value, data key); values scaled to `total`."""
    out = []
    for i, (label, value, key) in enumerate(rows):
        y = GAP + i * (BAR_H + GAP)
        w = 0 if not total else max(1.0, (WIDTH - LABEL_W - 70) * float(value) / total) if value else 0
        text = f"{value:.3f}" if isinstance(value, float) else f"{value}"
        out.append(f'{_label(y, label)}'
                   f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" rx="2"/>'
                   f'<text x="{LABEL_W + w + 6:.1f}" y="{y + 15}" data-count="{html.escape(key)}">'
                   f'{html.escape(text)}{unit}</text>')
    return _svg(len(rows) * (BAR_H + GAP) + GAP, testid, out)


def funnel_svg(summary: dict) -> str:
    """planned → generated → … → written, each bar scaled to the planned count."""
    steps = [("planned", summary.get("planned", 0))] + [(s, summary.get(s, 0)) for s in FUNNEL]
    return _bars([(s.replace("_", " "), int(v or 0), s) for s, v in steps], summary.get("planned") or 0,
                 testid="funnel")


def style_svg(counts: dict[str, Counter], clip: dict[str, list]) -> str:
    """Per style: candidates by status as one stacked bar, and the mean CLIP score of the kept
    (`counts`: style → status → candidates; `clip`: style → [sum, count] of the kept's scores)."""
    styles = list(counts)
    most = max((sum(c.values()) for c in counts.values()), default=0)
    out = []
    for i, style in enumerate(styles):
        y, x = GAP + i * (BAR_H + GAP), float(LABEL_W)
        out.append(_label(y, style))
        for status in (*vocabulary.STATUSES, vocabulary.PENDING):
            n = counts[style][status]
            if not n:
                continue
            w = (WIDTH - LABEL_W - 110) * n / most
            out.append(f'<rect x="{x:.1f}" y="{y}" width="{w:.1f}" height="{BAR_H}" fill="{COLOURS[status]}">'
                       f'<title>{html.escape(style)}: {n} {status}</title></rect>')
            x += w
        total, n = clip.get(style) or (0.0, 0)
        mean = f" · clip {total / n:.2f}" if n else ""
        out.append(f'<text x="{x + 6:.1f}" y="{y + 15}">{sum(counts[style].values())}{mean}</text>')
    y = GAP + len(styles) * (BAR_H + GAP) + 12
    x = LABEL_W
    for status, colour in COLOURS.items():  # the legend
        out.append(f'<rect x="{x}" y="{y - 9}" width="10" height="10" fill="{colour}"/>'
                   f'<text x="{x + 14}" y="{y}">{status}</text>')
        x += 90
    return _svg(len(styles) * (BAR_H + GAP) + GAP + 22, "styles-chart", out)


def brand_svg(summary: dict, styles: list[str]) -> str:
    """`summary.json`'s `brand_consistency` per style, or "not measured" where it is absent."""
    measured = summary.get("brand_consistency") or {}  # style → {"images", "mean_pairwise_cosine"}
    keys = sorted(set(styles) | set(measured), key=lambda s: (s == NO_STYLE, s))
    out = []
    for i, style in enumerate(keys):
        y = GAP + i * (BAR_H + GAP)
        figure = measured.get(style) or {}
        value = figure.get("mean_pairwise_cosine")
        out.append(_label(y, style))
        if value is None:
            why = f"{figure['images']} image: no pair to compare" if figure.get("images") else "not measured"
            out.append(f'<text x="{LABEL_W}" y="{y + 15}" class="muted">{why}</text>')
        else:
            w = (WIDTH - LABEL_W - 70) * min(max(value, 0.0), 1.0)
            out.append(f'<rect x="{LABEL_W}" y="{y}" width="{w:.1f}" height="{BAR_H}" rx="2"/>'
                       f'<text x="{LABEL_W + w + 6:.1f}" y="{y + 15}">{value:.3f}</text>')
        # how close to the style's reference image and style image
        near = [f"{label} {figure[key]:.3f}" for key, label in (("reference_similarity", "ref"),
                                                                 ("style_image_similarity", "look"))
                if figure.get(key) is not None]
        if near:
            out.append(f'<text x="{WIDTH - 4}" y="{y + 15}" text-anchor="end" class="muted">{" · ".join(near)}</text>')
    return _svg(max(1, len(keys)) * (BAR_H + GAP) + GAP, "brand-chart", out)


def reasons_list(summary: dict) -> str:
    """The reason counts of rejections and errors, most frequent first (not a chart: a list)."""
    reasons = summary.get("reasons") or {}
    if not reasons:
        return '<p class="muted">no rejections or errors</p>'
    items = "".join(f"<li><code>{html.escape(str(k))}</code> <b data-reason=\"{html.escape(str(k))}\">{int(v)}</b></li>"
                    for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))
    return f"<ul class=\"reasons\">{items}</ul>"
