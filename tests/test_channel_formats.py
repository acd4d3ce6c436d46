"""Channel formats: their names (job and styles, bad ones named by key or by row, column and
value), the canvas an aspect extends a source to, and the pixels of a format."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
from PIL import Image

from pipeline.errors import ConfigError, ManifestError
from pipeline.plan.canvas import canvas_for
from pipeline.spec.channel_formats import parse, parse_all, problems
from pipeline.spec.manifest import load_inputs
from pipeline.stages.outpaint import finish, margin_mask, start_image
from tests.helpers import job

ROWS = {"id": ["x"], "prompt": ["a mug"], "style": ["a"]}


@pytest.mark.parametrize("text, name, aspect, size", [
    ("9:16", "9:16", Fraction(9, 16), None),
    (" 1.91 : 1", "1.91:1", Fraction(191, 100), None),
    ("300x250", "300x250", Fraction(6, 5), (300, 250)),
    ("728X90", "728x90", Fraction(728, 90), (728, 90)),
    ("3.0:1", "3:1", Fraction(3), None),
])
def test_format_names_are_read_one_way(text, name, aspect, size):
    f = parse(text)
    assert (f.name, f.aspect, f.size, f.exact) == (name, aspect, size, size is not None)


@pytest.mark.parametrize("text, needle", [
    ("wide", "not a format"), ("0:1", "above 0"), ("1:20", "more than 10:1"), ("10x10", "sides must be 16..8192"),
    ("9:16:1", "not a format"), ("-9:16", "not a format"),
])
def test_bad_format_names_say_what_is_allowed(text, needle):
    with pytest.raises(ValueError, match=needle):
        parse(text)


def test_two_names_of_one_format_are_one_too_many():
    assert problems(["9:16", "18:32", "300x250", "600x500"]) == [
        "'18:32' is the same format as '9:16'"]  # an exact size is its pixels, not its aspect
    assert [f.name for f in parse_all(["16:9", "300x250"])] == ["16:9", "300x250"]


def test_the_job_section_is_checked_by_key_and_value(tmp_path):
    cfg = job(tmp_path, ROWS, extra='[formats]\nsizes = ["9:16", "300x250"]\nplacement = "top"\nfrom = "approved"\n')
    assert (cfg.formats.sizes, cfg.formats.placement, cfg.formats.source) == (("9:16", "300x250"), "top", "approved")
    assert job(tmp_path, ROWS).formats.sizes == ()  # no section: no formats
    with pytest.raises(ConfigError) as e:
        job(tmp_path, ROWS, extra='[formats]\nsizes = ["9:16", "wide", "16:9", "32:18"]\nplacement = "middle"\n'
                                  'from = "aproved"\n')
    lines = str(e.value).splitlines()
    assert any(line.endswith("[formats].placement must be one of center, left, right, top, bottom, got 'middle'")
               for line in lines)
    assert any("[formats].from must be one of written, approved, got 'aproved' (did you mean 'approved'?)" in line
               for line in lines)
    assert any("[formats].sizes: 'wide': not a format" in line for line in lines)
    assert any("[formats].sizes: '32:18' is the same format as '16:9'" in line for line in lines)


def test_a_styles_formats_are_checked_by_row_column_and_value(tmp_path):
    styles = {"style": ["a", "b", "c"], "formats": [["9:16", "banner"], None, []]}
    with pytest.raises(ManifestError) as e:
        load_inputs(job(tmp_path, ROWS, styles=styles))
    (p,) = [p for p in e.value.problems if p.column == "formats"]
    assert (p.row, p.id) == (0, "a") and p.message.startswith("'banner': not a format"), p


# ---- the canvas --------------------------------------------------------------------------------

SOURCES = [(64, 64), (512, 512), (512, 768), (768, 512), (1024, 1024), (640, 360), (96, 512)]
ASPECTS = ["1:1", "4:5", "9:16", "16:9", "1.91:1", "3:1", "1:3", "300x250", "728x90"]


@pytest.mark.parametrize("fmt", ASPECTS)
@pytest.mark.parametrize("source", SOURCES)
def test_the_canvas_extends_the_source_on_the_grid_to_the_aspect(source, fmt):
    f, (w, h) = parse(fmt), source
    c = canvas_for(w, h, f)
    assert c.width % 8 == 0 and c.height % 8 == 0 and c.left % 8 == 0 and c.top % 8 == 0
    assert c.width >= w and c.height >= h and (c.width == w or c.height == h)  # never cropped, one side kept
    left, top, right, bottom = c.box
    assert left >= 0 and right <= c.width and top >= 0 and bottom <= c.height
    error = abs(Fraction(c.width, c.height) / f.aspect - 1)
    if min(w, h) >= 512:
        assert error <= Fraction(1, 100), (c, float(error))
    # no other canvas on the grid that keeps the source is closer to the aspect
    for dw in (-8, 8):
        other = (c.width + dw, c.height) if c.height == h else (c.width, c.height + dw)
        if other[0] >= w and other[1] >= h:
            assert abs(Fraction(*other) / f.aspect - 1) >= error


@pytest.mark.parametrize("placement, box", [
    ("center", (0, 24, 64, 88)), ("top", (0, 0, 64, 64)), ("bottom", (0, 48, 64, 112)),
    ("left", (0, 24, 64, 88)),  # along the axis that does not grow: centred
])
def test_placement_puts_the_source_against_its_edge(placement, box):
    c = canvas_for(64, 64, parse("9:16"), placement)  # 64 / (9/16) = 113.8: 112 is the nearest on the grid
    assert ((c.width, c.height), c.box) == ((64, 112), box)


def test_an_aspect_the_source_already_has_adds_nothing():
    c = canvas_for(512, 768, parse("2:3"))
    assert (c.width, c.height, c.left, c.top, c.extends) == (512, 768, 0, 0, False)
    assert canvas_for(512, 768, parse("9:16")).extends


# ---- the pixels --------------------------------------------------------------------------------

def _source(w=64, h=48):
    rng = np.random.default_rng(0)
    base = np.linspace(40, 220, w, dtype=np.float32)[None, :, None] * np.ones((h, 1, 3), np.float32)
    return Image.fromarray(np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8))


def test_the_margins_start_from_the_sources_edges_and_the_mask_covers_only_them():
    src = _source()
    c = canvas_for(*src.size, parse("16:9"))
    start, mask = np.asarray(start_image(src, c)).astype(float), np.asarray(margin_mask(c))
    left, top, right, bottom = c.box
    assert start.shape == (c.height, c.width, 3) and mask.shape == (c.height, c.width)
    assert np.array_equal(start[top:bottom, left:right], np.asarray(src))  # the source, exact
    assert (mask[top:bottom, left:right] == 0).all() and (mask == 255).sum() == c.width * c.height - 64 * 48
    # the margins carry the source's own colours on: dark beside its dark edge, light beside its light one
    assert start[top:bottom, :left].mean() < 80 < 180 < start[top:bottom, right:].mean()
    assert start[top:bottom, :left].std() < np.asarray(src).std()  # blurred: no copied detail


@pytest.mark.parametrize("fmt", ["9:16", "1.91:1", "300x250"])
def test_a_format_keeps_the_source_exact_and_an_exact_size_is_its_pixels(fmt):
    src, f = _source(), parse(fmt)
    c = canvas_for(*src.size, f)
    painted = Image.new("RGB", (c.width, c.height), (0, 0, 255))  # whatever the model painted
    out = finish(painted, src, c, f)
    if f.exact:
        assert out.size == f.size
        return
    left, top, right, bottom = c.box
    assert out.size == (c.width, c.height)
    assert np.array_equal(np.asarray(out)[top:bottom, left:right], np.asarray(src))


# ---- outpainting on the embedded models ---------------------------------------------------------

def _encoded(image: Image.Image) -> bytes:
    import io

    buf = io.BytesIO()
    image.save(buf, "PNG")
    return buf.getvalue()


@pytest.fixture(scope="module", params=["embedded:tiny-sd", "embedded:tiny-flux"], ids=["sd", "flux"])
def generator(request):
    import torch

    from pipeline.models.diffusion import load_diffusion
    from pipeline.stages.generate import Generator

    pipes = load_diffusion(request.param, revision=None, scheduler=None, device="cpu", dtype=torch.float32)
    return Generator(pipes, batch_size=2)


def _format(source: Image.Image, variant: str, seed: int, placement: str = "center", **kw):
    """A format candidate as the plan hands it to the generator (its parent's image attached)."""
    from pipeline.spec.schema import PLAN_FIELDS
    from pipeline.stages.contract import CANVAS

    c = canvas_for(*source.size, parse(variant), placement)
    return {f.name: None for f in PLAN_FIELDS} | {
        "prompt": "a red mug on a table", "negative_prompt": "", "seed": seed, "mode": "outpaint", "steps": 2,
        "guidance_scale": 3.0, "strength": 0.9, "width": c.width, "height": c.height, "variant": variant,
        "placement": placement, CANVAS: _encoded(source), **kw}


@pytest.mark.parametrize("variant", ["9:16", "16:9", "300x250"])
def test_outpainting_paints_the_margins_and_gives_the_source_back_exact(generator, variant):
    src = _source(64, 64)
    (out,) = generator([_format(src, variant, 5)])
    assert out.error is None, out.error
    f, c = parse(variant), canvas_for(64, 64, parse(variant))
    if f.exact:
        assert out.image.shape == (250, 300, 3)
        return
    left, top, right, bottom = c.box
    assert out.image.shape == (c.height, c.width, 3)
    assert np.array_equal(out.image[top:bottom, left:right], np.asarray(src))
    margin = np.asarray(margin_mask(c)) == 255
    start = np.asarray(start_image(src, c))
    assert np.abs(out.image[margin].astype(int) - start[margin]).max() > 8  # the model painted the margins


def test_a_format_regenerated_alone_matches_its_batch_and_the_seed_matters(generator):
    src = _source(64, 64)
    pair = generator([_format(src, "9:16", 5), _format(src, "9:16", 6)])
    alone = generator([_format(src, "9:16", 6)])[0]
    assert pair[1].batch_size == 2 and np.abs(pair[1].image.astype(int) - alone.image).max() <= 2
    assert not np.array_equal(pair[0].image, pair[1].image)


def test_a_source_that_is_not_the_planned_one_is_an_error_row(generator):
    cand = _format(_source(64, 64), "9:16", 5) | {"height": 200}
    (out,) = generator([cand])
    assert out.image is None and "the 9:16 canvas of a 64x64 source is 64x112, planned 64x200" in out.error


# ---- formats in a run ----------------------------------------------------------------------------

RUN_ROWS = {"id": ["mug", "staged"], "prompt": ["a red mug on a table", "a bottle"], "style": ["story", None],
            "product_image": [None, "cutout.png"], "sku": ["S-1", "S-2"]}
RUN_STYLES = {"style": ["story"], "formats": [["9:16", "1.91:1"]]}
FORMATS = '[formats]\nsizes = ["16:9", "300x250"]\n'
PLAIN = {"style": ["story"]}  # a style without its own formats: the job's


def _run_formats(folder, extra=FORMATS, styles=RUN_STYLES, **kw):
    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job
    from tests.helpers import save_cutout, write_job

    if not (folder / "cutout.png").exists():
        save_cutout(folder / "cutout.png")
    cfg = load_job(write_job(folder, RUN_ROWS, styles=styles, extra=extra, num_candidates=2, keep=1))
    report = run_job(cfg, backend="in-process", **kw)
    return report, pq.read_table(report.output_dir / "results.parquet").to_pylist()


@pytest.fixture(scope="module")
def formatted(tmp_path_factory):
    folder = tmp_path_factory.mktemp("formats")
    return folder, *_run_formats(folder)


def test_a_styles_brand_figures_count_its_sources_not_their_formats(formatted):
    """A format is its source extended: counted as an image of the style, it would count the source again."""
    _, report, rows = formatted
    sources = [r for r in rows if r["status"] == "written" and r["variant"] is None]
    assert any(r["status"] == "written" and r["variant"] for r in rows)
    figures = report.summary["brand_consistency"]
    assert {s: f["images"] for s, f in figures.items()} == {
        (r["style"] or "(no style)"): sum(1 for x in sources if x["style"] == r["style"]) for r in sources}


def test_every_written_image_gets_its_styles_formats_as_judged_children(formatted):
    _, report, rows = formatted
    assert report.exit_code == 0, report.summary
    sources = {r["item_id"]: r for r in rows if r["variant"] is None and r["status"] == "written"}
    children = [r for r in rows if r["variant"] is not None]
    assert len(sources) == 2  # keep 1 of each row
    by_parent = {}
    for r in children:
        by_parent.setdefault(r["parent"], []).append(r["variant"])
    # the style's own formats for the styled row, the job's for the row without a style
    assert {sources[p]["id"]: sorted(v) for p, v in by_parent.items()} == {
        "mug": ["1.91:1", "9:16"], "staged": ["16:9", "300x250"]}
    for r in children:
        parent = sources[r["parent"]]
        assert r["status"] in ("written", "rejected") and r["reason_code"] != "not_selected", r
        assert (r["mode"], r["seed_source"], r["id"], r["sku"], r["prompt"]) == (
            "outpaint", "format", parent["id"], parent["sku"], parent["prompt"])
        assert r["clip_score"] is not None and r["moderation"] is not None  # judged like any candidate
        assert r["candidate"] >= 2 and r["seed"] != parent["seed"]
    assert len({r["item_id"] for r in rows}) == len({(r["id"], r["candidate"]) for r in rows}) == len(rows)


def test_an_aspect_format_keeps_the_source_and_the_staged_product_exact(formatted):
    folder, report, rows = formatted
    out = report.output_dir
    by_item = {r["item_id"]: r for r in rows}
    for r in (r for r in rows if r["variant"] is not None and r["status"] == "written"):
        image = np.asarray(Image.open(out / r["path"]).convert("RGB"))
        source = np.asarray(Image.open(out / by_item[r["parent"]]["path"]).convert("RGB"))
        if r["variant"] == "300x250":
            assert image.shape == (250, 300, 3)
            continue
        c = canvas_for(source.shape[1], source.shape[0], parse(r["variant"]))
        left, top, right, bottom = c.box
        assert image.shape == (c.height, c.width, 3) == (r["height"], r["width"], 3)
        assert np.array_equal(image[top:bottom, left:right], source), r["variant"]


def test_formats_carry_their_source_as_a_parent_ingredient_and_verify(formatted):
    import json

    import c2pa

    from pipeline.review.verify import verify_output

    _, report, rows = formatted
    problems, checked = verify_output(report.output_dir)
    assert problems == [] and checked == len([r for r in rows if r["status"] == "written"])
    r = next(r for r in rows if r["variant"] == "9:16" and r["status"] == "written")
    store = json.loads(c2pa.Reader(str(report.output_dir / r["path"])).json())
    active = store["manifests"][store["active_manifest"]]
    (parent,) = [i for i in active["ingredients"] if i["relationship"] == "parentOf"]
    assert parent.get("active_manifest") in store["manifests"]  # the source's own manifest, embedded
    actions = next(a for a in active["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]


def test_a_rerun_with_a_format_added_makes_only_that_format(tmp_path):
    first, rows = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9"]\n', styles=PLAIN)
    assert sorted(r["variant"] for r in rows if r["variant"]) == ["16:9", "16:9"]
    again, more = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9", "4:5"]\n', styles=PLAIN)
    assert again.summary["this_run"] in ({"written": 2}, {"written": 1, "rejected": 1}, {"rejected": 2}), again.summary
    assert sorted(r["variant"] for r in more if r["variant"]) == ["16:9", "16:9", "4:5", "4:5"]
    kept = {r["item_id"]: r["sha256"] for r in rows}
    assert all(kept[r["item_id"]] == r["sha256"] for r in more if r["item_id"] in kept)
    same, _ = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9", "4:5"]\n', styles=PLAIN)
    assert same.summary["this_run"] == {}


def test_approved_only_makes_formats_of_what_a_reviewer_approved(tmp_path):
    report, rows = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9"]\nfrom = "approved"\n', styles=PLAIN)
    assert not [r for r in rows if r["variant"]]
    pick = next(r for r in rows if r["status"] == "written" and r["id"] == "mug")
    (tmp_path / "decisions.csv").write_text(f"item_id,decision\n{pick['item_id']},approve\n")
    _, rows = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9"]\nfrom = "approved"\n', styles=PLAIN,
                           decisions=str(tmp_path / "decisions.csv"))
    assert [(r["parent"], r["variant"]) for r in rows if r["variant"]] == [(pick["item_id"], "16:9")]


def test_a_rejected_format_is_made_again_with_a_fresh_seed(tmp_path):
    _, rows = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9"]\n', styles=PLAIN)
    fmt = next(r for r in rows if r["variant"] and r["id"] == "mug")
    (tmp_path / "decisions.csv").write_text(f"item_id,decision\n{fmt['item_id']},reject\n")
    _, rows = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9"]\n', styles=PLAIN,
                           decisions=str(tmp_path / "decisions.csv"))
    mine = [r for r in rows if r["variant"] and r["parent"] == fmt["parent"]]
    assert len(mine) == 2 and len([r for r in rows if r["id"] == "mug" and r["variant"] is None]) == 2  # no new round
    old, new = sorted(mine, key=lambda r: r["item_id"] != fmt["item_id"])
    assert (old["status"], old["reason_code"]) == ("rejected", "reviewer_rejected")
    assert new["seed"] != old["seed"] and new["status"] in ("written", "rejected") and new["decision"] is None


def test_formats_neither_fill_a_rows_places_nor_ask_for_rounds():
    from pipeline.judge.rounds import ask_new_rounds

    def row(item, variant=None, parent=None):
        return {"item_id": item, "id": "mug", "keep": 2, "status": "written", "reason": None, "reason_code": None,
                "moderation": "pass", "parent": parent, "variant": variant}

    rows = [row("a"), row("b"), row("a916", "9:16", "a"), row("b916", "9:16", "b")]
    both = [{"item_id": "a", "id": "mug", "decision": "reject"}, {"item_id": "b", "id": "mug", "decision": "reject"}]
    ask_new_rounds(both, rows, {})
    assert both[0].get("new_round") is True  # the formats that pass are no places of the row
    fmt = [{"item_id": "a916", "id": "mug", "decision": "reject"}]
    ask_new_rounds(fmt, [row("a"), row("a916", "9:16", "a")], {})
    assert not fmt[0].get("new_round")


def test_the_report_shows_each_sources_formats_beside_it(formatted):
    from pipeline.review.report import write_report
    from tests.test_report import _open, browser

    _, report, rows = formatted
    write_report(report.output_dir)
    sources = {r["parent"] for r in rows if r["variant"]}
    with browser() as b:
        page, seen = _open(b, report.output_dir / "report.html", report.output_dir)
        for source in sources:
            group = page.locator(f'#sheet .source[data-source="{source}"]')
            assert group.locator(".card").first.get_attribute("data-item") == source
            shown = group.locator(".formats .card")
            assert shown.count() == len([r for r in rows if r["parent"] == source])
            assert group.locator(".formats dd.format").first.text_content().endswith(f" of {source}")
            assert group.locator(".formats img.shot").count() == len(
                [r for r in rows if r["parent"] == source and r["path"]])
            assert group.locator(".formats img.outline").count() == 0  # the product outline fits the source only
        assert not seen["errors"]


@pytest.mark.slow
def test_a_run_killed_while_making_formats_completes_exactly_once_on_rerun(tmp_path):
    import signal

    from tests.helpers import save_cutout, write_job
    from tests.test_kill_rerun import assert_complete, run

    save_cutout(tmp_path / "cutout.png")
    job = write_job(tmp_path, RUN_ROWS, styles=RUN_STYLES, num_candidates=2, keep=1,
                    extra=FORMATS + "[output]\nshard_rows = 1\n")
    out = tmp_path / "out"
    # the rows' outcomes commit as the run's first shard (one unit here); killed before the formats' shard
    first = run(job, out, "driver.kill_before_shard=2")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    assert "formats: 4 planned, 4 to go" in first.stderr
    second = run(job, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert "0 already done" not in second.stderr and "formats: 4 planned, 4 to go" in second.stderr
    assert_complete(out, 8)


def test_validate_says_which_formats_each_style_gets(tmp_path, capsys):
    from pipeline.cli import main
    from tests.helpers import save_cutout, write_job

    save_cutout(tmp_path / "cutout.png")
    job = write_job(tmp_path, RUN_ROWS, styles=RUN_STYLES, extra=FORMATS, num_candidates=2, keep=1)
    assert main(["validate", str(job)]) == 0
    assert ("channel formats of each written image, made once it is written: story: 9:16, 1.91:1; "
            "(no style): 16:9, 300x250") in capsys.readouterr().out


def test_refining_a_format_is_refused_by_row_with_what_to_do_instead(tmp_path):
    from pipeline.errors import ManifestError
    from pipeline.review import decisions as review
    from pipeline.storage.store import Output

    report, rows = _run_formats(tmp_path, extra='[formats]\nsizes = ["16:9"]\n', styles=PLAIN)
    fmt = next(r for r in rows if r["variant"])
    (tmp_path / "decisions.csv").write_text(f"item_id,decision,prompt\n{fmt['item_id']},refine,at dusk\n")
    out = Output(str(report.output_dir))
    with pytest.raises(ManifestError) as e:
        review.read(str(tmp_path / "decisions.csv"), out, review.load(out).latest, 0.5)
    (p,) = e.value.problems
    assert (p.row, p.column) == (0, "decision") and "a channel format (16:9) cannot be refined" in p.message
