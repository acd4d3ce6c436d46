"""The report's data, streamed from the results table a batch of candidates at a time.

The page (`report.py`) carries only what it shows before any row: counts, charts, the filters'
choices. The rows go to small script files of one report generation (`layout.report_generation`)
that the page loads on demand, each calling a global function (JSONP: `<script src>` works from
`file://` and from any static server, where `fetch` of a local file does not):

    rows-<n>.js     `CHUNK_ROWS` row groups in display order: a page of the contact sheet needs one
    index.js        every row's style and every candidate's (status, reason): filters and their
                    counts are exact over all rows, without loading them
    search-<n>.js   what a search matches (id, passthrough values, item ids), `SEARCH_ROWS` rows a part

Memory: flat in the number of candidates. The results are read a batch at a time and put in
display order a part at a time (`report_order`), only `BATCH` candidates at a time become Python
objects, and the index's codes wait in temp files (`report_index`).
"""

from __future__ import annotations

import json
import shlex
from collections import Counter, defaultdict, deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pyarrow as pa

from pipeline.judge.outcome import with_reason_codes
from pipeline.review.outlines import Outlines
from pipeline.review.report_index import Index
from pipeline.review.report_order import SEQ, Results, in_display_order
from pipeline.run.summary import NO_STYLE
from pipeline.spec import schema, vocabulary
from pipeline.storage.layout import report_index, report_rows, report_search
from pipeline.storage.store import Output

CHUNK_ROWS = 240  # row groups per rows-<n>.js: ten pages of the contact sheet
SEARCH_ROWS = 25_000  # row groups per search-<n>.js
BATCH = 20_000  # candidates turned into Python objects at a time (a part of the order, or less)
WRITERS = 4  # files written at once (each local write waits on its fsyncs, each remote one on a PUT)
PREFETCH_SEARCH = 4 << 20  # bytes of search text the page loads as it opens (more: at the first search)

# Per-candidate columns the page shows (short keys keep the row files small).
CANDIDATE_KEYS = {"candidate": "k", "item_id": "item", "seed": "seed", "model": "model", "path": "path",
                  "preview_path": "preview",
                  "status": "status", "reason": "reason", "reason_code": "code", "rank": "rank", "selected": "sel",
                  "clip_score": "clip", "clip_threshold": "clip_thr", "image_unsafe_score": "img_unsafe",
                  "prompt_unsafe_score": "prompt_unsafe", "moderation": "moderation", "c2pa_state": "c2pa",
                  "run_id": "run", "width": "w", "height": "h", "decision": "decision", "note": "note",
                  "parent": "parent", "source_prompt": "words", "strength": "strength", "variant": "fmt"}
ROW_KEYS = ("id", "row", "style", "source_prompt", "prompt", "negative_prompt", "mode", "init_image", "mask",
            "steps", "guidance_scale", "strength")


def json_for_script(obj) -> str:
    """JSON safe inside a <script> element and valid JavaScript: no `</script>`, `<!--` or stray
    `&` can end it, no line separator breaks it."""
    text = json.dumps(obj, ensure_ascii=False, default=str, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026") \
        .replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _plain(value):
    """A passthrough value as the page shows it (lists and structs as compact JSON)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return json.dumps(value, default=str, ensure_ascii=False)


def regenerate_command(job: str | None, row_id: str) -> str:
    return f"python -m pipeline run {shlex.quote(job or 'JOB.toml')} --rows {shlex.quote(row_id)} --output OTHER_DIR"


def passthrough_of(names: list[str]) -> list[str]:
    """The passthrough columns among a results table's column `names`."""
    return [c for c in names if c not in schema.RESERVED_NAMES]


def _values(part: pa.Table, cols: dict[str, str]) -> list[tuple[str, list]]:
    """(key, the column's values) for each column of `cols` in `part`; a column of nulls left out."""
    return [(short, part[col].to_pylist()) for col, short in cols.items()
            if col in part.column_names and part[col].null_count < part.num_rows]


def iter_groups(results: Results, runs: dict[str, dict], folder: Path, outlines: Outlines | None = None,
                batch: int = BATCH) -> Iterator[dict]:
    """The contact sheet's data in display order: one group per manifest row, its candidates side
    by side. `runs`: run id → {"job", thresholds} (for the command that regenerates a row);
    `outlines` draws the staged rows' outlines on the way; `folder`: for temp files."""
    passthrough = passthrough_of(results.names)
    columns = [c for c in results.names if c in {*CANDIDATE_KEYS, *ROW_KEYS, *passthrough}]  # the outlines' too

    def prepare(part: pa.RecordBatch) -> pa.Table:
        table = with_reason_codes(pa.table(part))  # results written before the column: by their code
        return outlines.add(table) if outlines is not None else table

    def finish(g: dict, outline: str | None) -> dict:
        run = next((c["run"] for c in reversed(g["c"]) if c.get("run")), None)
        g["cmd"] = regenerate_command((runs.get(run) or {}).get("job"), g["id"])
        if outline:
            g["outline"] = outline
        return g

    g, outline = None, (None, None)  # the group's outline: its staged candidate first in the table's order
    ordered = in_display_order(results, columns, folder, prepare)
    for part in (p.slice(start, batch) for p in ordered for start in range(0, p.num_rows, batch)):
        ids, row_values, cand_values = part["id"].to_pylist(), _values(part, {k: k for k in ROW_KEYS}), \
            _values(part, CANDIDATE_KEYS)
        pass_values = [(name, part[name].to_pylist()) for name in passthrough]
        drawn = part[Outlines.COLUMN].to_pylist() if outlines is not None else [None] * len(ids)
        seqs = part[SEQ].to_pylist()
        for i, row_id in enumerate(ids):
            if g is None or row_id != g["id"]:
                if g is not None:
                    yield finish(g, outline[1])
                g, outline = {k: v[i] for k, v in row_values if v[i] is not None}, (None, None)
                g["style"] = g.get("style") or NO_STYLE
                g["pass"] = {name: _plain(v[i]) for name, v in pass_values}
                g["c"] = []
            if drawn[i] and (outline[0] is None or seqs[i] < outline[0]):
                outline = (seqs[i], drawn[i])
            c = {short: v[i] for short, v in cand_values if v[i] is not None}  # nulls left out
            if "seed" in c:
                c["seed"] = str(c["seed"])  # 63 bits: past what a JS number holds exactly
            if "parent" not in c or "fmt" in c:  # a refinement's own words and strength; the others share the row's
                c.pop("words", None)
                c.pop("strength", None)
            g["c"].append(c)
    if g is not None:
        yield finish(g, outline[1])


class ReportData:
    """One pass over the groups: the row, index and search files go to `output` as they fill (to
    nowhere without one), and what the page shows up front is counted on the way (per style,
    per status, per reason). `WRITERS` files are written at once, a few more wait in memory: no
    more."""

    def __init__(self, generation: str, output: Output | None, folder: Path):
        self.generation, self.output = generation, output
        self._put = output.put if output else (lambda rel, data: None)
        self.writers, self.writing = ThreadPoolExecutor(WRITERS, thread_name_prefix="report"), deque()
        self.groups = self.candidates = 0
        self.by_style: dict[str, Counter] = defaultdict(Counter)  # style → status → candidates
        self.clip: dict[str, list] = defaultdict(lambda: [0.0, 0])  # style → [sum, count] of written CLIP
        self.status: Counter = Counter()
        self.reason: Counter = Counter()
        self.index = Index(folder)
        self.rows: list[dict] = []
        self.hay: list[list] = []
        self.chunks = self.search_parts = self.search_bytes = 0

    def add(self, g: dict) -> None:
        style, pairs = g["style"], []
        for c in g["c"]:
            status, code = c.get("status", vocabulary.PENDING), c.get("code", "")
            self.by_style[style][status] += 1
            self.status[status] += 1
            if code:
                self.reason[code] += 1
            if status == vocabulary.WRITTEN and c.get("clip") is not None:
                self.clip[style][0] += c["clip"]
                self.clip[style][1] += 1
            pairs.append((status, code))
        self.index.add(style, pairs)
        self.groups += 1
        self.candidates += len(g["c"])
        self.rows.append(g)
        self.hay.append([g["id"], *g["pass"].values(), *(c.get("item", "") for c in g["c"])])
        if len(self.rows) == CHUNK_ROWS:
            self._flush_rows()
        if len(self.hay) == SEARCH_ROWS:
            self._flush_search()

    def _flush_rows(self) -> None:
        if self.rows:
            self._script(report_rows(self.generation, self.chunks), "rows", self.chunks, self.rows)
            self.chunks, self.rows = self.chunks + 1, []

    def _flush_search(self) -> None:
        if self.hay:
            self.search_bytes += self._script(report_search(self.generation, self.search_parts), "search",
                                              self.search_parts, self.hay)
            self.search_parts, self.hay = self.search_parts + 1, []

    def _script(self, rel: str, kind: str, number: int, payload) -> int:
        data = (f"__report.{kind}({number}," + json_for_script(payload) + ");\n").encode("utf-8")
        self.writing.append(self.writers.submit(self._put, rel, data))
        while len(self.writing) > 2 * WRITERS:
            self.writing.popleft().result()  # a failed write raises here
        return len(data)

    def wait(self) -> None:
        """Every file written (or the first error raised); the writers stopped."""
        try:
            while self.writing:
                self.writing.popleft().result()
        finally:
            self.writers.shutdown(cancel_futures=True)

    def close(self) -> dict:
        """Write what is left and the index; returns what the page needs to find them."""
        self._flush_rows()
        self._flush_search()
        self.wait()
        self.index.close()
        if self.output:
            head = json_for_script({"styles": list(self.index.styles), "pairs": [list(p) for p in self.index.pairs]})
            self.index.write(self.output, report_index(self.generation), head[:-1])
        g = self.generation
        return {"groups": self.groups, "candidates": self.candidates, "chunk_rows": CHUNK_ROWS,
                "search_rows": SEARCH_ROWS, "prefetch_search": self.search_bytes <= PREFETCH_SEARCH,
                "files": {"rows": [report_rows(g, n) for n in range(self.chunks)], "index": report_index(g),
                          "search": [report_search(g, n) for n in range(self.search_parts)]},
                "facets": {"style": {s: sum(self.by_style[s].values()) for s in self.by_style},
                           "status": dict(self.status), "reason": dict(self.reason)}}


def build(results: Results, runs: dict[str, dict], outlines: Outlines | None, generation: str,
          output: Output | None, folder: Path) -> tuple[dict, ReportData]:
    """Stream `results` into the files of `generation` (in `output`); returns the page's data
    island (counts, facets, where the files are) and the counts the charts draw. `folder`: for
    temp files."""
    data = ReportData(generation, output, folder)
    try:
        for g in iter_groups(results, runs, folder, outlines):
            data.add(g)
        return data.close(), data
    finally:
        data.wait()
        data.index.close()
