"""Previews: a small, unsigned image of every judged candidate (`_previews/`), so a reviewer sees
the runners-up they choose from; `[output].previews = false` turns them off. A preview is not an
asset: never `path`, never signed, never checked by `verify`, never a reason to rerun."""

from __future__ import annotations

import io
import json
import shutil

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.errors import EXIT_OK
from pipeline.judge.files import previewed
from pipeline.run.job import run_job
from pipeline.spec import vocabulary
from pipeline.spec.load import load_job
from pipeline.storage.layout import PREVIEWS, REPORT, preview_path
from tests.helpers import write_job
from tests.test_report import _open, browser

ROWS = {"id": ["mug", "shoe"], "prompt": ["a red mug", "a blue shoe"]}
TINY = "[generate]\nsteps = 2\nwidth = 64\nheight = 64\nbatch_size = 4\n"


def _run(folder, extra: str = ""):
    job_path = write_job(folder, ROWS, styles=None, extra=extra + TINY, num_candidates=3, keep=1)
    result = run_job(load_job(job_path), backend="in-process")
    assert result.exit_code == EXIT_OK
    return job_path, result.output_dir, pq.read_table(result.output_dir / "results.parquet").to_pylist()


@pytest.fixture(scope="module")
def previewed_run(tmp_path_factory):
    """A run with the defaults: previews on, rejected images not written."""
    return _run(tmp_path_factory.mktemp("previews"))


def test_every_judged_candidate_gets_a_small_unsigned_preview(previewed_run):
    import c2pa

    _, out, results = previewed_run
    runners_up = [r for r in results if r["reason_code"] == vocabulary.NOT_SELECTED]
    assert runners_up and all(r["path"] is None for r in runners_up)  # no asset: write_rejected is off
    judged = [r for r in results if r["status"] in (vocabulary.WRITTEN, vocabulary.REJECTED)]
    assert len(judged) == len(results) == 6
    for r in judged:
        assert r["preview_path"] == preview_path(r["item_id"]) and r["preview_path"].startswith(f"{PREVIEWS}/")
        assert r["preview_path"] not in (r["path"], r["clean_path"])
        data = (out / r["preview_path"]).read_bytes()
        image = Image.open(io.BytesIO(data))
        assert image.format == "WEBP" and max(image.size) <= 256 and image.size == (64, 64)
        with pytest.raises(Exception):  # noqa: B017 — no manifest at all: c2pa says so in its own words
            c2pa.Reader("image/webp", io.BytesIO(data))
    # Previews are not images of the output: verify passes and checks only the written ones.
    assert not any(p.parts[0] == PREVIEWS for p in (out / "images").rglob("*"))
    assert main(["verify", str(out)]) == EXIT_OK


def test_a_missing_preview_reruns_nothing_and_a_stray_one_goes(previewed_run, tmp_path, capsys):
    """A preview is disposable: one that is gone is no reason to rerun; one no outcome lists is a
    stray and goes; the listed ones stay, and none counts as a removed image."""
    job_path, out, results = previewed_run
    shutil.copytree(job_path.parent, tmp_path / "run")  # the job, its manifest and its output
    job_path, out = tmp_path / "run" / job_path.name, tmp_path / "run" / out.relative_to(job_path.parent)
    gone = next(r for r in results if r["reason_code"] == vocabulary.NOT_SELECTED)
    (out / gone["preview_path"]).unlink()
    stray = out / preview_path("ff" + "0" * 30)
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_bytes(b"not listed")
    result = run_job(load_job(job_path), backend="in-process")
    assert result.exit_code == EXIT_OK and result.removed_strays == []
    after = pq.read_table(out / "results.parquet").to_pylist()
    assert [(r["item_id"], r["status"], r["finished_at"]) for r in after] == \
        [(r["item_id"], r["status"], r["finished_at"]) for r in results]  # nothing ran again
    assert not stray.exists()
    assert all((out / r["preview_path"]).exists() for r in after if r["item_id"] != gone["item_id"])
    capsys.readouterr()
    assert main(["verify", str(out)]) == EXIT_OK


def test_previews_off(tmp_path):
    _, out, results = _run(tmp_path, "[output]\npreviews = false\n")
    assert all(r["preview_path"] is None for r in results)
    assert not (out / PREVIEWS).exists()


def test_a_moderation_blocked_image_gets_no_preview(tmp_path):
    _, out, results = _run(tmp_path, "[filter]\nimage_unsafe_threshold = 0.0\n")
    assert {r["reason_code"] for r in results} == {vocabulary.IMAGE_UNSAFE}
    assert all(r["preview_path"] is None for r in results)
    assert not list(out.glob(f"{PREVIEWS}/*/*"))


@pytest.mark.parametrize(("status", "code", "decision", "expected"), [
    (vocabulary.WRITTEN, None, None, True),
    (vocabulary.REJECTED, vocabulary.NOT_SELECTED, None, True),
    (vocabulary.REJECTED, vocabulary.BELOW_CLIP_THRESHOLD, None, True),
    (vocabulary.REJECTED, vocabulary.REVIEWER_REJECTED, vocabulary.REJECT, True),  # what was rejected stays visible
    (vocabulary.REJECTED, vocabulary.IMAGE_UNSAFE, None, False),  # never a viewable copy of a blocked image
    (vocabulary.REJECTED, vocabulary.PROMPT_BLOCKED, None, False),  # never generated
    (vocabulary.ERROR, vocabulary.WRITE_ERROR, None, False),
])
def test_which_candidates_are_previewed(status, code, decision, expected):
    r = {"status": status, "reason_code": code, "decision": decision}
    assert previewed(r, True) is expected
    assert previewed(r, False) is False


def test_report_data_names_the_preview(previewed_run):
    from pipeline.review.report import groups_of

    _, out, _ = previewed_run
    groups = groups_of(pq.read_table(out / "results.parquet"), {})
    cands = [c for g in groups for c in g["c"]]
    assert all(c["preview"].startswith(f"{PREVIEWS}/") for c in cands)
    assert json.dumps(groups)  # plain data for the page


def test_runners_up_show_their_previews_and_a_row_compares_side_by_side(previewed_run, capsys):
    """In a real browser: a runner-up (no asset) shows its preview, not a placeholder; a click on
    a card's image opens every candidate of its row side by side with rank, status, reason and
    CLIP score; Escape closes it."""
    _, out, results = previewed_run
    assert main(["report", str(out)]) == EXIT_OK
    capsys.readouterr()
    runner_up = next(r for r in results if r["reason_code"] == vocabulary.NOT_SELECTED)
    row = [r for r in results if r["id"] == runner_up["id"]]
    with browser() as b:
        page, seen = _open(b, out / REPORT, out)
        item = runner_up["item_id"]
        card = page.locator(f'.card[data-item="{item}"]')
        assert card.locator("[data-placeholder]").count() == 0
        shot = card.locator("img.shot.preview")
        assert shot.get_attribute("src") == runner_up["preview_path"]
        shot.scroll_into_view_if_needed()
        page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=shot.element_handle())

        dialog = page.locator("dialog#compare")
        assert not dialog.is_visible()
        card.locator(".frame").click()
        assert dialog.is_visible()
        cells = dialog.locator(".cell")
        assert cells.evaluate_all("cs => cs.map(c => c.dataset.item)") == [r["item_id"] for r in row]
        assert dialog.locator(".cell.current").get_attribute("data-item") == runner_up["item_id"]
        for i, r in enumerate(row):
            text = cells.nth(i).text_content()
            assert f"#{r['rank']}" in text and r["status"] in text and f"{r['clip_score']:.2f}" in text
            assert (r["reason"] or "") in text
            image = cells.nth(i).locator("img")
            page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=image.element_handle())
            assert image.get_attribute("src") == (r["path"] or r["preview_path"])
        page.keyboard.press("Escape")
        assert not dialog.is_visible()
        assert not page.evaluate("document.getElementById('compare').open")
        assert not seen["errors"]
        outside = [u for u in seen["requests"] if not u.startswith(out.as_uri() + "/")]
        assert not outside, outside  # offline: nothing fetched from anywhere else
