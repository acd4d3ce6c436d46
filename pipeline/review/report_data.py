"""The report's data, streamed from the results table a batch of candidates at a time.

The page (`report.py`) carries only what it shows before any row: counts, charts, the filters'
choices. The rows go to small script files of one report generation (`layout.report_generation`)
that the page loads on demand, each calling a global function (JSONP: `<script src>` works from
`file://` and from any static server, where `fetch` of a local file does not):

    rows-<n>.js     `CHUNK_ROWS` row groups in display order: a page of the contact sheet needs one
    index.js        every row's style and every candidate's (status, reason): filters and their
                    counts are exact over all rows, without loading them
    search-<n>.js   what a search matches (id, passthrough values, item ids), `SEARCH_ROWS` rows a part

Memory: the results stay Arrow columns; only `BATCH` candidates at a time become Python objects.
"""

from __future__ import annotations

import json
import shlex
from array import array
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.judge.outcome import with_reason_codes
from pipeline.run.summary import NO_STYLE
from pipeline.spec import schema, vocabulary
from pipeline.storage.layout import report_index, report_rows, report_search

CHUNK_ROWS = 240  # row groups per rows-<n>.js: ten pages of the contact sheet
SEARCH_ROWS = 25_000  # row groups per search-<n>.js
BATCH = 50_000  # candidates turned into Python objects at a time
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


def passthrough_of(results: pa.Table) -> list[str]:
    return [c for c in results.column_names if c not in schema.RESERVED_NAMES]


def report_columns(names: list[str]) -> list[str]:
    """The columns of a results table (`names`) that the report reads: what the page shows, the
    passthrough columns, and what the outlines are drawn from."""
    wanted = {*CANDIDATE_KEYS, *ROW_KEYS, "reason", "init_image", "mask", "width", "height"}
    return [c for c in names if c in wanted or c not in schema.RESERVED_NAMES]


def display_order(results: pa.Table) -> pa.Array:
    """The candidates in the contact sheet's order: by style (no style last), manifest row, id,
    candidate; a row's candidates side by side (a stable sort: equal keys keep their order)."""
    style = pc.fill_null(results["style"], "")
    bare = pc.or_(pc.equal(style, ""), pc.equal(style, NO_STYLE))
    keys = pa.table({"bare": pc.cast(bare, pa.int8()), "style": pc.if_else(bare, "", style),
                     "row": pc.fill_null(results["row"], 0), "id": results["id"],
                     "k": pc.fill_null(results["candidate"], 0)})
    return pc.sort_indices(keys, sort_keys=[(name, "ascending") for name in keys.column_names])


def _values(part: pa.Table, cols: dict[str, str]) -> list[tuple[str, list]]:
    """(key, the column's values) for each column of `cols` in `part`; a column of nulls left out."""
    return [(short, part[col].to_pylist()) for col, short in cols.items()
            if col in part.column_names and part[col].null_count < part.num_rows]


def iter_groups(results: pa.Table, runs: dict[str, dict], outlines: dict[str, str] | None = None,
                batch: int = BATCH) -> Iterator[dict]:
    """The contact sheet's data in display order: one group per manifest row, its candidates side
    by side. `runs`: run id → {"job", thresholds} (for the command that regenerates a row)."""
    outlines = outlines or {}
    passthrough = passthrough_of(results)
    results = with_reason_codes(results)  # results written before the column: by their code
    table = results.select([c for c in {*CANDIDATE_KEYS, *ROW_KEYS, *passthrough} if c in results.column_names])
    order = display_order(table)

    def finish(g: dict) -> dict:
        run = next((c["run"] for c in reversed(g["c"]) if c.get("run")), None)
        g["cmd"] = regenerate_command((runs.get(run) or {}).get("job"), g["id"])
        if g["id"] in outlines:
            g["outline"] = outlines[g["id"]]
        return g

    g = None
    for start in range(0, len(order), batch):
        part = table.take(order.slice(start, batch))
        ids, row_values, cand_values = part["id"].to_pylist(), _values(part, {k: k for k in ROW_KEYS}), \
            _values(part, CANDIDATE_KEYS)
        pass_values = [(name, part[name].to_pylist()) for name in passthrough]
        for i, row_id in enumerate(ids):
            if g is None or row_id != g["id"]:
                if g is not None:
                    yield finish(g)
                g = {k: v[i] for k, v in row_values if v[i] is not None}
                g["style"] = g.get("style") or NO_STYLE
                g["pass"] = {name: _plain(v[i]) for name, v in pass_values}
                g["c"] = []
            c = {short: v[i] for short, v in cand_values if v[i] is not None}  # nulls left out
            if "seed" in c:
                c["seed"] = str(c["seed"])  # 63 bits: past what a JS number holds exactly
            if "parent" not in c or "fmt" in c:  # a refinement's own words and strength; the others share the row's
                c.pop("words", None)
                c.pop("strength", None)
            g["c"].append(c)
    if g is not None:
        yield finish(g)


class ReportData:
    """One pass over the groups: the row, index and search files go to `put` as they fill, and
    what the page shows up front is counted on the way (per style, per status, per reason).
    `WRITERS` files are written at once, a few more wait in memory: no more."""

    def __init__(self, generation: str, put: Callable[[str, bytes], None] | None):
        self.generation, self._put = generation, put or (lambda rel, data: None)
        self.writers, self.writing = ThreadPoolExecutor(WRITERS, thread_name_prefix="report"), deque()
        self.groups = self.candidates = 0
        self.by_style: dict[str, Counter] = defaultdict(Counter)  # style → status → candidates
        self.clip: dict[str, list] = defaultdict(lambda: [0.0, 0])  # style → [sum, count] of written CLIP
        self.status: Counter = Counter()
        self.reason: Counter = Counter()
        self.styles: dict[str, int] = {}  # index codes, in order of first sight
        self.pairs: dict[tuple[str, str], int] = {}
        self.row_style, self.row_size, self.codes = array("l"), array("l"), array("l")
        self.rows: list[dict] = []
        self.hay: list[list] = []
        self.chunks = self.search_parts = self.search_bytes = 0

    def add(self, g: dict) -> None:
        style = g["style"]
        self.row_style.append(self.styles.setdefault(style, len(self.styles)))
        self.row_size.append(len(g["c"]))
        for c in g["c"]:
            status, code = c.get("status", vocabulary.PENDING), c.get("code", "")
            self.by_style[style][status] += 1
            self.status[status] += 1
            if code:
                self.reason[code] += 1
            if status == vocabulary.WRITTEN and c.get("clip") is not None:
                self.clip[style][0] += c["clip"]
                self.clip[style][1] += 1
            self.codes.append(self.pairs.setdefault((status, code), len(self.pairs)))
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

    def _script(self, rel: str, kind: str, number: int | None, payload) -> int:
        head = f"__report.{kind}(" + ("" if number is None else f"{number},")
        data = (head + json_for_script(payload) + ");\n").encode("utf-8")
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
        self._script(report_index(self.generation), "index", None, {
            "styles": list(self.styles), "pairs": [list(p) for p in self.pairs],
            "style": self.row_style.tolist(), "size": self.row_size.tolist(), "code": self.codes.tolist()})
        self.row_style = self.row_size = self.codes = array("l")
        self.wait()
        g = self.generation
        return {"groups": self.groups, "candidates": self.candidates, "chunk_rows": CHUNK_ROWS,
                "search_rows": SEARCH_ROWS, "prefetch_search": self.search_bytes <= PREFETCH_SEARCH,
                "files": {"rows": [report_rows(g, n) for n in range(self.chunks)], "index": report_index(g),
                          "search": [report_search(g, n) for n in range(self.search_parts)]},
                "facets": {"style": {s: sum(self.by_style[s].values()) for s in self.by_style},
                           "status": dict(self.status), "reason": dict(self.reason)}}


def build(results: pa.Table, runs: dict[str, dict], outlines: dict[str, str] | None, generation: str,
          put: Callable[[str, bytes], None] | None) -> tuple[dict, ReportData]:
    """Stream `results` into the files of `generation` (through `put`); returns the page's data
    island (counts, facets, where the files are) and the counts the charts draw."""
    data = ReportData(generation, put)
    try:
        for g in iter_groups(results, runs, outlines):
            data.add(g)
        return data.close(), data
    finally:
        data.wait()
