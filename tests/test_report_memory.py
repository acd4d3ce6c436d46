"""The report in bounded memory (issue 20): its peak does not grow with the number of candidates,
and cutting the display order into parts changes nothing on the page."""

from __future__ import annotations

import json
import random

import pyarrow as pa

import pipeline.review.report_index as report_index
import pipeline.review.report_order as report_order
import pipeline.storage.tables as tables
from bench.report import run_report, write_results
from pipeline.review.report import render
from pipeline.run.summary import NO_STYLE
from pipeline.storage.store import Output
from tests.test_report import synthetic_results

GROWTH_MB = 40  # peak at 400k candidates over the peak at 100k (sorting every row whole: +145 MB)
ROW_GROUP = 25_000  # a smaller plan chunk than a run's, so the smaller table already has several


def _peak_mb(folder, candidates: int) -> float:
    """The peak RSS of writing the report of a synthetic results table (3 candidates a row) in a
    process of its own, as `python -m pipeline report` would (`bench/report.py`'s child)."""
    folder.mkdir()
    write_results(folder, candidates, ROW_GROUP)
    return run_report(folder)["peak_rss_mb"]


def test_report_peak_memory_does_not_grow_with_candidates(tmp_path):
    small = _peak_mb(tmp_path / "small", 100_000)
    large = _peak_mb(tmp_path / "large", 400_000)
    print(f"report peak RSS: {small:.0f} MB at 100k candidates, {large:.0f} MB at 400k")
    assert large - small < GROWTH_MB, (small, large)


def _formats_after_main_rows(rows: int) -> pa.Table:
    """Results in plan order with what makes the order hard: styles of every kind (none, empty,
    `NO_STYLE`, non-ASCII), format children after every main row (same id and row, later
    candidates), and a few rows and candidates without a number."""
    rnd = random.Random(7)
    table = synthetic_results(rows)
    style = [rnd.choice(["studio", "brand", None, "", NO_STYLE, "zeta", "Ästhetik"]) for _ in range(rows)]
    table = table.set_column(table.schema.get_field_index("style"), "style",
                             pa.array([style[i // 3] for i in range(table.num_rows)]))
    children = table.take(pa.array(rnd.sample(range(table.num_rows), table.num_rows // 3)))
    children = children.set_column(children.schema.get_field_index("candidate"), "candidate",
                                   pa.array([rnd.choice([1, 3, 4]) for _ in range(children.num_rows)], pa.int64()))
    children = children.set_column(children.schema.get_field_index("item_id"), "item_id",
                                   pa.array([f"child-{i}" for i in range(children.num_rows)]))
    table = pa.concat_tables([table, children])
    for name in ("row", "candidate"):
        values = table[name].to_pylist()
        for i in rnd.sample(range(len(values)), 10):
            values[i] = None
        table = table.set_column(table.schema.get_field_index(name), name, pa.array(values, pa.int64()))
    return table


def _reference(table: pa.Table) -> list[tuple[str, str]]:
    """(id, item id) of each candidate in the contact sheet's order, by one stable sort in Python."""
    r = table.to_pylist()

    def key(i: int):
        style = r[i]["style"] if r[i]["style"] not in (None, "", NO_STYLE) else None
        return (style is None, style or "", r[i]["row"] or 0, r[i]["id"], r[i]["candidate"] or 0, i)
    return [(r[i]["id"], r[i]["item_id"]) for i in sorted(range(len(r)), key=key)]


def _script(path) -> object:
    text = path.read_text()
    return json.loads(text[text.index("(") + 1:text.rindex(")")].split(",", 1)[-1] if "rows" in path.name
                      else text[text.index("(") + 1:text.rindex(")")])


def test_parts_and_spilled_codes_make_the_page_one_whole_sort_would(tmp_path, monkeypatch):
    """Parts of 300 candidates, batches of 500 and the index's codes flushed every 7: the row
    files hold every candidate in the order of one stable sort, grouped by row, and the index
    says the same of every row."""
    monkeypatch.setattr(report_order, "PART", 300)
    monkeypatch.setattr(tables, "BATCH_ROWS", 500)
    monkeypatch.setattr(report_index, "FLUSH", 7)
    table = _formats_after_main_rows(2000)
    render(table, {"planned": table.num_rows}, output=Output(str(tmp_path)), generation="report_assets/g-test")
    folder = tmp_path / "report_assets" / "g-test"
    groups = [g for path in sorted(folder.glob("rows-*.js")) for g in _script(path)]
    assert [(g["id"], c["item"]) for g in groups for c in g["c"]] == _reference(table)
    index = _script(folder / "index.js")
    assert index["size"] == [len(g["c"]) for g in groups]
    assert [index["styles"][s] for s in index["style"]] == [g["style"] for g in groups]
    assert [tuple(index["pairs"][p]) for p in index["code"]] == \
        [(c.get("status", "pending"), c.get("code", "")) for g in groups for c in g["c"]]
