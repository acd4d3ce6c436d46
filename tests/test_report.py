"""`report`: report.html in a real headless browser (Debian's chromium driven by Playwright),
on an object-storage output, and at 10,000 rows."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.errors import EXIT_OK
from pipeline.review.report import PAGE_ROWS, render, write_report
from pipeline.run.job import run_job
from pipeline.spec import schema
from pipeline.spec.load import load_job
from pipeline.storage.layout import REPORT
from tests.helpers import save_cutout, write_job

ROOT = Path(__file__).resolve().parents[1]
ARTEFACTS = ROOT / "out" / "test-artefacts"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
EVIL = "a red mug </script><script>alert('x')</script> <b>bold</b>"

ROWS = {
    "id": ["mug", "blocked", "staged", "bike"],
    "prompt": [EVIL, "an nsfw poster", "a bottle on a beach", "a bicycle in snow"],
    "style": ["studio", None, None, "brand"],
    "product_image": [None, None, "cutout.png", None],
    "sku": ["S-1", "S-2", "S-3", "S-4"],
}
EXTRA = """
[filter]
blocked_terms = ["nsfw"]
[output]
write_rejected = true
[generate]
steps = 2
width = 32
height = 32
batch_size = 4
"""


@pytest.fixture(scope="module")
def finished(tmp_path_factory):
    """A tiny finished run: kept rejected images, a blocked row (placeholders), a staged row."""
    folder = tmp_path_factory.mktemp("report")
    save_cutout(folder / "cutout.png")
    job_path = write_job(folder, ROWS, extra=EXTRA, num_candidates=2, keep=1)
    result = run_job(load_job(job_path), backend="in-process")
    assert result.exit_code == EXIT_OK
    return job_path, result.output_dir


def _report(output: str, capsys) -> dict:
    assert main(["report", output]) == EXIT_OK
    return json.loads(capsys.readouterr().out)


def _unavailable(why: str):
    """Skip a browser test where no browser can run; CI (`.ci/run`) makes that a failure."""
    if os.environ.get("ASSET_PIPELINE_BROWSER_TESTS") == "required":
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def browser():
    try:
        from playwright import sync_api
    except ImportError:
        _unavailable("no playwright: pip install -e '.[dev]'")
    if not Path(CHROMIUM).exists():
        _unavailable("no chromium: apt-get install -y chromium (.ci/run does)")
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


def _open(b, path: Path, folder: Path):
    """A page on `path` that records console errors, page errors, dialogs and every request."""
    page = b.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
    seen = {"errors": [], "requests": [], "dialogs": []}
    page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
    page.on("pageerror", lambda e: seen["errors"].append(str(e)))
    page.on("request", lambda r: seen["requests"].append(r.url))
    page.on("dialog", lambda d: (seen["dialogs"].append(d.message), d.dismiss()))
    page.goto(path.as_uri())
    page.wait_for_load_state("load")
    return page, seen


def export_decisions(page, to: Path, button: str = "#export-json") -> Path:
    """Click an export button of the page and keep the file it downloads at `to`."""
    with page.expect_download() as dl:
        page.click(button)
    shutil.copy(dl.value.path(), to)
    return to


def _visible_cards(page) -> int:
    return page.locator("#sheet .card").count()


def test_report_in_a_browser(finished, capsys):
    job_path, out = finished
    printed = _report(str(out), capsys)
    summary = json.loads((out / "summary.json").read_text())
    results = pq.read_table(out / "results.parquet").to_pylist()
    html = (out / REPORT).read_text()
    assert "<script>alert" not in html and "<b>bold</b>" not in html  # user text never becomes markup
    assert {k: printed[k] for k in ("planned", "written", "rejected")} == \
        {k: summary[k] for k in ("planned", "written", "rejected")}

    started = time.monotonic()
    with browser() as b:
        page, seen = _open(b, out / REPORT, out)
        # The counts on the page are summary.json's.
        for key in ("planned", "written", "rejected", "error", "pending"):
            assert int(page.locator(f'[data-summary="{key}"]').text_content()) == summary[key], key
        for key in ("generated", "passed_moderation", "passed_filters", "selected", "signed", "written"):
            assert page.locator(f'[data-testid="funnel"] [data-count="{key}"]').text_content() == str(summary[key])
        # Brand consistency as summary.json has it: a figure per style with a pair of written images.
        brand = page.locator('[data-testid="brand-chart"]').text_content()
        for style, figure in summary["brand_consistency"].items():
            value = figure["mean_pairwise_cosine"]
            assert style in brand and (f"{value:.3f}" in brand if value is not None else "no pair to compare" in brand)
        assert _visible_cards(page) == len(results)

        # Every image on the page renders (scrolled into view: they load lazily).
        shots = page.locator("#sheet img.shot")
        assert shots.count() == sum(1 for r in results if r["path"]) > 0
        for i in range(shots.count()):
            shots.nth(i).scroll_into_view_if_needed()
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shots.nth(i).element_handle())
        blocked = page.locator('.row[data-id="blocked"] [data-placeholder]')
        assert blocked.count() == 2 and "prompt blocked" in blocked.first.text_content()
        kept = page.locator('.card[data-status="written"] .badge')
        assert kept.count() == summary["written"] and kept.first.text_content() == "#1 kept"

        # The user's prompt is shown as text, and ran nothing.
        assert EVIL in page.locator('.row[data-id="mug"] q.prompt').text_content()
        seed = next(r["seed"] for r in results if r["id"] == "staged" and r["candidate"] == 0)
        assert f"seed {seed}" in page.locator('.row[data-id="staged"] .card').first.text_content()  # all 63 bits
        regen = page.locator('.row[data-id="mug"] code.regen').text_content()
        assert regen == f"python -m pipeline run {job_path} --rows mug --output OTHER_DIR"

        # Filter by style, then search by a passthrough column and by an item id.
        page.select_option("#f-style", "studio")
        assert _visible_cards(page) == sum(r["style"] == "studio" for r in results) == 2
        page.select_option("#f-style", "")
        page.select_option("#f-status", "written")
        assert _visible_cards(page) == summary["written"]
        page.select_option("#f-status", "")
        page.fill("#f-search", "S-3")
        assert page.locator("#sheet .row").count() == 1 and _visible_cards(page) == 2
        item = next(r["item_id"] for r in results if r["id"] == "bike" and r["candidate"] == 1)
        page.fill("#f-search", item[:12])
        assert page.locator("#sheet .card").evaluate_all("cs => cs.map(c => c.dataset.item)") == [item]
        page.fill("#f-search", "")

        # The staged row's product outline: hidden, then shown over the image.
        staged = page.locator('.row[data-id="staged"] .card').first
        outline = staged.locator("img.outline")
        assert not outline.is_visible()
        staged.locator("button.toggle-outline").click()
        assert outline.is_visible()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=outline.element_handle())
        assert page.locator('.row[data-id="mug"] img.outline').count() == 0
        page.check("#f-outlines")  # every staged image at once
        assert page.locator("img.outline:visible").count() == 2
        staged.locator("button.toggle-outline").click()
        page.uncheck("#f-outlines")
        assert page.locator("img.outline:visible").count() == 0
        staged.locator("button.toggle-outline").click()
        page.evaluate("window.scrollTo(0, 0)")  # the sticky filter bar at the top of a full-page shot
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTEFACTS / "report.png"), full_page=True)

        # Decisions: approve one, refine another with a prompt and strength; export both ways.
        mug = page.locator('.row[data-id="mug"] .card')
        mug.nth(0).locator("button.d-approve").click()
        mug.nth(1).locator("button.d-refine").click()
        mug.nth(1).locator("input.d-prompt").fill('warmer light, "soft", shadows')
        mug.nth(1).locator("input.d-strength").fill("0.4")
        mug.nth(1).locator("input.d-note").fill("too cold")
        ids = mug.evaluate_all("cs => cs.map(c => c.dataset.item)")
        with page.expect_download() as dl:
            page.click("#export-json")
        exported = json.loads(Path(dl.value.path()).read_text())
        assert exported == [
            {"item_id": ids[0], "decision": "approve", "note": "", "prompt": "", "strength": None},
            {"item_id": ids[1], "decision": "refine", "note": "too cold", "prompt": 'warmer light, "soft", shadows',
             "strength": 0.4}]
        with page.expect_download() as dl:
            page.click("#export-csv")
        rows = list(csv.DictReader(io.StringIO(Path(dl.value.path()).read_text())))
        assert [(r["item_id"], r["decision"], r["prompt"], r["strength"]) for r in rows] == [
            (ids[0], "approve", "", ""), (ids[1], "refine", 'warmer light, "soft", shadows', "0.4")]

        page.reload()  # decisions survive a reload (kept in the browser's storage for this file)
        assert page.locator("#decided").text_content() == "2 decided"
        assert page.locator('.row[data-id="mug"] .card').nth(1).locator("input.d-strength").input_value() == "0.4"

        assert not seen["errors"] and not seen["dialogs"]
        outside = [u for u in seen["requests"] if not (u.startswith(out.as_uri() + "/") or u.startswith("blob:"))]
        assert not outside, outside
    print(f"browser part: {time.monotonic() - started:.1f}s")


def test_decisions_round_trip_in_the_browser(tmp_path, capsys):
    """Review in the page (reject a kept image, approve another), export, apply with `run
    --decisions`, then see it in the files, the results and the next report; the same file
    again changes nothing."""
    job_path = write_job(tmp_path, {"id": ["a", "b"], "prompt": ["a red mug", "a blue shoe"]}, styles=None,
                         num_candidates=2, keep=1)
    out = tmp_path / "out"
    assert main(["run", str(job_path), "--in-process"]) == EXIT_OK
    capsys.readouterr()
    _report(str(out), capsys)
    before = {(r["id"], r["candidate"]): r for r in pq.read_table(out / "results.parquet").to_pylist()}
    kept = {i: r for (i, _), r in before.items() if r["status"] == "written"}
    with browser() as b:
        page, seen = _open(b, out / REPORT, out)
        page.locator(f'.card[data-item="{kept["a"]["item_id"]}"] button.d-reject').click()
        page.locator(f'.card[data-item="{kept["a"]["item_id"]}"] input.d-note').fill("off brand")
        page.locator(f'.card[data-item="{kept["b"]["item_id"]}"] button.d-approve').click()
        decisions = export_decisions(page, tmp_path / "decisions.json")
        assert not seen["errors"]
    approved_bytes = (out / kept["b"]["path"]).read_bytes()

    assert main(["run", str(job_path), "--in-process", "--decisions", str(decisions)]) == EXIT_OK
    after = {(r["id"], r["candidate"]): r for r in pq.read_table(out / "results.parquet").to_pylist()}
    gone = after["a", kept["a"]["candidate"]]
    assert (gone["status"], gone["reason"], gone["note"]) == ("rejected", "reviewer_rejected", "off brand")
    assert not (out / kept["a"]["path"]).exists()
    (runner_up,) = [r for (i, _), r in after.items() if i == "a" and r["status"] == "written"]
    assert runner_up["item_id"] != kept["a"]["item_id"] and (out / runner_up["path"]).exists()
    assert after["b", kept["b"]["candidate"]]["decision"] == "approve"
    assert (out / kept["b"]["path"]).read_bytes() == approved_bytes
    assert main(["verify", str(out)]) == EXIT_OK
    files = {p: p.read_bytes() for p in (out / "images").rglob("*.png")}
    assert main(["run", str(job_path), "--in-process", "--decisions", str(decisions)]) == EXIT_OK
    assert {(r["id"], r["candidate"]): r for r in pq.read_table(out / "results.parquet").to_pylist()} == after
    assert {p: p.read_bytes() for p in (out / "images").rglob("*.png")} == files

    # The next report shows it: the runner-up kept, the rejected one removed with the reviewer's note.
    capsys.readouterr()
    _report(str(out), capsys)
    with browser() as b:
        page, seen = _open(b, out / REPORT, out)
        row = page.locator('.row[data-id="a"]')
        assert row.locator('.card[data-status="written"]').get_attribute("data-item") == runner_up["item_id"]
        removed = row.locator(f'.card[data-item="{kept["a"]["item_id"]}"]')
        assert "a reviewer rejected it" in removed.text_content() and "reject · off brand" in removed.text_content()
        assert "approve" in page.locator(f'.card[data-item="{kept["b"]["item_id"]}"] dd.decided').text_content()
        assert not seen["errors"]


def test_report_on_object_storage(finished, s3, capsys):
    """`report s3://bucket/prefix` reads and writes through the bucket, and prints the funnel."""
    _, out = finished
    fs = s3.fs()
    prefix = f"{s3.bucket}/runs/a"
    for rel in ("results.parquet", "summary.json", *(p.relative_to(out).as_posix() for p in out.glob("_runs/*.json")),
                *(p.relative_to(out).as_posix() for p in out.glob("images/*/*"))):
        fs.pipe(f"{prefix}/{rel}", (out / rel).read_bytes())
    printed = _report(f"s3://{prefix}", capsys)
    assert printed["written"] == json.loads((out / "summary.json").read_text())["written"]
    page = fs.cat_file(f"{prefix}/{REPORT}").decode()
    assert 'data-summary="written"' in page
    assets = fs.find(f"{prefix}/report_assets")
    assert any("/outline-" in a for a in assets)  # the staged row's outline, next to the report
    (rows,) = [a for a in assets if a.endswith("/rows-000000.js")]  # the rows, in the page's generation
    assert rows[len(prefix) + 1:] in page and "images/" in fs.cat_file(rows).decode()

    _report(f"s3://{prefix}", capsys)  # again: the new generation replaces the old one, whole
    page, assets = fs.cat_file(f"{prefix}/{REPORT}").decode(), fs.find(f"{prefix}/report_assets")
    (rows,) = [a for a in assets if a.endswith("/rows-000000.js")]
    assert rows[len(prefix) + 1:] in page
    assert len({a.rsplit("/", 1)[0] for a in assets if "/g-" in a}) == 1


def synthetic_results(rows: int, candidates: int = 3) -> pa.Table:
    """A results table of `rows` manifest rows (no images needed: the page is measured, not looked at)."""
    n = rows * candidates
    ids = [f"row-{i:05d}" for i in range(rows) for _ in range(candidates)]
    cols = {f.name: pa.nulls(n, f.type) for f in schema.RESULTS_SCHEMA}
    status = [("written" if k == 0 else "rejected") for _ in range(rows) for k in range(candidates)]
    cols.update({
        "id": pa.array(ids), "row": pa.array([i for i in range(rows) for _ in range(candidates)], pa.int64()),
        "candidate": pa.array([k for _ in range(rows) for k in range(candidates)], pa.int64()),
        "item_id": pa.array([f"{i:032x}" for i in range(n)]),
        "style": pa.array([("studio", "brand", None)[i % 3] for i in range(rows) for _ in range(candidates)]),
        "prompt": pa.array([f"prompt {i}" for i in ids]), "mode": pa.array(["t2i"] * n),
        "status": pa.array(status), "reason": pa.array([None if s == "written" else "not_selected" for s in status]),
        # the last candidate of each row rejected and not kept (write_rejected off): a placeholder
        "path": pa.array([f"images/00/{i % candidates}.png" if i % candidates < candidates - 1 else None
                          for i in range(n)]),
        "rank": pa.array([k + 1 for _ in range(rows) for k in range(candidates)], pa.int64()),
    })
    table = pa.table(cols, schema=schema.RESULTS_SCHEMA)
    return table.append_column("sku", pa.array([f"SKU-{i}" for i in ids]))


def test_ten_thousand_rows_open_one_page_at_a_time(tmp_path):
    results = synthetic_results(10_000)
    started = time.monotonic()
    write_report(tmp_path, results)
    (tmp_path / "images" / "00").mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (32, 32), (80 * k, 90, 200)).save(tmp_path / "images" / "00" / f"{k}.png")
    rendered = time.monotonic() - started
    with browser() as b:
        started = time.monotonic()
        page, seen = _open(b, tmp_path / REPORT, tmp_path)
        opened = time.monotonic() - started
        assert page.locator("#sheet .row").count() == PAGE_ROWS
        assert page.locator("#sheet img").count() == PAGE_ROWS * 2  # one page, not 20,000 images
        placeholders = page.locator("#sheet [data-placeholder]")
        assert placeholders.count() == PAGE_ROWS and "write_rejected is off" in placeholders.first.text_content()
        assert page.locator("#sheet img").evaluate_all("is => is.every(i => i.loading === 'lazy')")
        assert page.locator("#shown").get_attribute("data-candidates") == "30000"
        page.fill("#f-search", "SKU-row-09999")
        assert page.locator("#sheet .row").get_attribute("data-id") == "row-09999"
        page.fill("#f-search", "")
        page.click("#next")
        assert page.locator("#sheet .row").count() == PAGE_ROWS
        assert "page 2 of" in page.locator("#page").text_content()
        assert not seen["errors"]
    print(f"10k rows: render {rendered:.2f}s, open {opened:.2f}s")
    assert rendered < 10 and opened < 10


def test_hundred_thousand_rows_open_in_about_a_second(tmp_path):
    """100,000 rows (300,000 candidates): the first page shows in about a second, a far page
    loads its own chunk, filters count over every row, and decisions work on a lazily loaded row."""
    import pyarrow.compute as pc

    rows = 100_000
    results = synthetic_results(rows)
    started = time.monotonic()
    write_report(tmp_path, results)
    written = time.monotonic() - started
    (tmp_path / "images" / "00").mkdir(parents=True)
    for k in range(3):
        Image.new("RGB", (32, 32), (80 * k, 90, 200)).save(tmp_path / "images" / "00" / f"{k}.png")
    studio_rejected = pc.and_(pc.equal(results["style"], "studio"), pc.equal(results["status"], "rejected"))
    with browser() as b:
        page = b.new_page(viewport={"width": 1280, "height": 900}, accept_downloads=True)
        seen = {"errors": [], "requests": []}
        page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
        page.on("pageerror", lambda e: seen["errors"].append(str(e)))
        page.on("request", lambda r: seen["requests"].append(r.url))
        started = time.monotonic()
        page.goto((tmp_path / REPORT).as_uri(), wait_until="commit")
        page.locator("#sheet .row").first.wait_for()
        opened = time.monotonic() - started  # the first page of the contact sheet on screen
        assert page.locator("#sheet .row").count() == PAGE_ROWS
        assert page.locator("#shown").get_attribute("data-candidates") == str(3 * rows)
        assert sum("/rows-" in u for u in seen["requests"]) == 1  # one chunk of rows, not all of them

        # A far page: the last one, its own chunk loaded on demand.
        last = -(-rows // PAGE_ROWS)
        page.fill("#goto", str(last))
        page.press("#goto", "Enter")
        page.locator('.row[data-id="row-99998"]').wait_for()
        assert f"page {last} of {last}" == page.locator("#page").text_content()
        assert page.locator("#sheet .row").count() == rows - (last - 1) * PAGE_ROWS
        assert any(u.endswith(f"/rows-{(rows - 1) // 240:06d}.js") for u in seen["requests"])
        assert sum("/rows-" in u for u in seen["requests"]) == 2

        # Decisions on rows of that lazily loaded chunk, exported.
        cards = page.locator('.row[data-id="row-99998"] .card')
        ids = cards.evaluate_all("cs => cs.map(c => c.dataset.item)")
        cards.nth(0).locator("button.d-approve").click()
        cards.nth(1).locator("button.d-reject").click()
        cards.nth(2).locator("button.d-refine").click()
        cards.nth(2).locator("input.d-prompt").fill("warmer")
        with page.expect_download() as dl:
            page.click("#export-json")
        exported = json.loads(Path(dl.value.path()).read_text())
        assert [(d["item_id"], d["decision"], d["prompt"]) for d in exported] == \
            [(ids[0], "approve", ""), (ids[1], "reject", ""), (ids[2], "refine", "warmer")]

        # Filters count over every row, not only the loaded ones.
        page.select_option("#f-style", "studio")
        page.select_option("#f-status", "rejected")
        expected = pc.sum(studio_rejected).as_py()
        page.wait_for_function(f"() => document.querySelector('#shown').dataset.candidates === '{expected}'")
        assert page.locator("#shown").get_attribute("data-rows") == str(len(set(
            results.filter(studio_rejected)["id"].to_pylist())))
        assert page.locator("#sheet .card").evaluate_all("cs => cs.every(c => c.dataset.status === 'rejected')")
        page.click("#next")
        page.locator("#sheet .row").first.wait_for()
        assert "page 2 of" in page.locator("#page").text_content()
        page.select_option("#f-style", "")
        page.select_option("#f-status", "")

        # A search: its text is loaded at the first search (too large to load as the page opens).
        started = time.monotonic()
        page.fill("#f-search", "SKU-row-09999")
        page.wait_for_function("() => document.querySelector('#shown').dataset.rows === '1'")
        searched = time.monotonic() - started
        assert page.locator("#sheet .row").get_attribute("data-id") == "row-09999"
        page.fill("#f-search", "")
        page.wait_for_function(f"() => document.querySelector('#shown').dataset.rows === '{rows}'")
        assert page.locator("#decided").text_content() == "3 decided"
        assert not seen["errors"], seen["errors"]
        assert all(u.startswith(tmp_path.as_uri() + "/") or u.startswith("blob:") for u in seen["requests"])
    print(f"100k rows: write {written:.2f}s, open {opened:.2f}s, first search {searched:.2f}s")
    assert opened < 3


def test_a_shrinking_report_leaves_no_stale_rows(tmp_path):
    """A report's row files live in one generation folder that report.html names; writing a
    smaller report replaces it whole (written first, the page last, the old folder removed after)."""
    import re

    def generations() -> list[Path]:
        return sorted(p for p in (tmp_path / "report_assets").iterdir() if p.is_dir())

    write_report(tmp_path, synthetic_results(1000))
    (old,) = generations()
    assert len(list(old.glob("rows-*.js"))) == -(-1000 // 240)
    write_report(tmp_path, synthetic_results(10))
    (new,) = generations()
    assert new != old and [p.name for p in new.iterdir()] != [] and len(list(new.glob("rows-*.js"))) == 1
    named = set(re.findall(r'"(report_assets/[^"]+)"', (tmp_path / REPORT).read_text()))
    assert named == {p.relative_to(tmp_path).as_posix() for p in new.iterdir()}
    assert "row-00009" in (new / "rows-000000.js").read_text()


def test_page_data_cannot_break_out_and_brand_consistency_is_shown():
    results = synthetic_results(3)
    evil = "</script><script>alert(1)</script><!--DATA-->"
    results = results.set_column(results.schema.get_field_index("id"), "id",
                                 pa.array([evil, evil, evil, "b", "b", "b", "c", "c", "c"]))
    results = results.set_column(results.schema.get_field_index("sku"), "sku", pa.array([evil] * 9))
    summary = {"planned": 9, "written": 3, "reasons": {evil: 1},
               "brand_consistency": {"studio": {"images": 4, "mean_pairwise_cosine": 0.82,
                                                "reference_similarity": 0.61},
                                     "brand": {"images": 1, "mean_pairwise_cosine": None}}}
    page = render(results, summary, runs={"r1": {"config": {"source": "/jobs/x y.toml"}}}, title=evil)
    assert "<script>alert" not in page and page.count("<script") == 2  # the data island and the page's script
    brand = page[page.index('data-testid="brand-chart"'):]
    brand = brand[:brand.index("</svg>")]
    assert ">0.820<" in brand and ">ref 0.610<" in brand and "1 image: no pair to compare" in brand
    assert "not measured" in brand  # (no style): no figure in the summary


def test_regenerate_command_quotes_what_a_shell_would_split():
    from pipeline.review.report import regenerate_command

    assert regenerate_command("/jobs/a b.toml", "row 1") == \
        "python -m pipeline run '/jobs/a b.toml' --rows 'row 1' --output OTHER_DIR"
    assert regenerate_command(None, "x") == "python -m pipeline run JOB.toml --rows x --output OTHER_DIR"


def test_outline_is_the_edge_of_what_generation_kept(tmp_path):
    from pipeline.review.outlines import outline_png
    from pipeline.stages.product import prepare_inputs

    im = Image.new("RGBA", (48, 32), (0, 0, 0, 0))
    im.paste((20, 200, 20, 255), (10, 5, 30, 28))
    im.save(tmp_path / "cutout.png")
    outline = Image.open(io.BytesIO(outline_png(str(tmp_path / "cutout.png"), "alpha", 64, 32)))
    assert outline.size == (64, 32) and outline.mode == "RGBA"
    drawn = outline.getchannel("A").point(lambda v: 255 if v else 0)
    _, keep = prepare_inputs(str(tmp_path / "cutout.png"), "alpha", 64, 32)
    kept = keep.point(lambda v: 255 if v >= 128 else 0)
    assert drawn.getbbox() == kept.getbbox()  # the outline runs along the kept product's edge
    left, top, right, bottom = kept.getbbox()
    assert not drawn.crop((left + 1, top + 1, right - 1, bottom - 1)).getbbox()  # and leaves its inside clear


def test_report_served_as_is_over_http(finished, capsys):
    """The folder served as it is (a static file server, a bucket website): same page, same files."""
    import functools
    import threading
    from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

    _, out = finished
    _report(str(out), capsys)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Quiet, directory=str(out)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}/"
    try:
        with browser() as b:
            page = b.new_page()
            seen = {"errors": [], "requests": []}
            page.on("console", lambda m: m.type == "error" and seen["errors"].append(m.text))
            page.on("request", lambda r: seen["requests"].append(r.url))
            page.goto(base + REPORT)
            first = page.locator("#sheet img.shot").first
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=first.element_handle())
            assert not seen["errors"]
            assert all(u.startswith(base) for u in seen["requests"]), seen["requests"]
    finally:
        server.shutdown()
        server.server_close()
