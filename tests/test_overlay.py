"""A brand overlay (logo and headline) laid out per format inside the safe area: opaque logo pixels
exact, text that wraps and shrinks rather than overflowing, a non-Latin headline rendered, and a
headline that cannot fit refused."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.spec.inputs import load_font
from pipeline.stages.overlay import MIN_TEXT_PX, HeadlineDoesNotFit, Overlay, layout, render, safe_area

LATIN = Path("/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf")
CJK = Path("/usr/share/fonts/truetype/wqy/wqy-microhei.ttc")  # Debian's fonts-wqy-microhei (.ci/run installs it)


def _font(path: Path) -> bytes:
    if not path.is_file():
        why = f"no {path}: apt-get install -y fonts-dejavu-core fonts-wqy-microhei (.ci/run does)"
        if os.environ.get("ASSET_PIPELINE_FONT_TESTS") == "required":
            pytest.fail(why)
        pytest.skip(why)
    return path.read_bytes()


def _logo() -> bytes:
    """A 40×20 logo: an opaque red bar with a transparent surround and a half-transparent edge."""
    logo = Image.new("RGBA", (40, 20), (0, 0, 0, 0))
    logo.paste((200, 20, 20, 255), (4, 4, 36, 16))
    logo.paste((20, 20, 200, 128), (0, 0, 40, 2))
    buf = io.BytesIO()
    logo.save(buf, "PNG")
    return buf.getvalue()


def _background(w, h):
    return Image.fromarray(np.full((h, w, 3), 90, np.uint8))


@pytest.mark.parametrize("size", [(512, 512), (288, 512), (728, 90), (300, 250)])
@pytest.mark.parametrize("position", ["top-left", "bottom-right", "center", "bottom"])
def test_the_logo_sits_in_the_safe_area_at_its_size_with_its_opaque_pixels_exact(size, position):
    w, h = size
    overlay = Overlay(logo=_logo(), logo_position=position, logo_size=0.2)
    box = layout(w, h, overlay).logo_box
    left, top, right, bottom = safe_area(w, h)
    assert left <= box[0] and top <= box[1] and box[2] <= right and box[3] <= bottom
    assert max(box[2] - box[0], box[3] - box[1]) == round(min(w, h) * 0.2)
    out = np.asarray(render(_background(w, h), overlay))
    rendered = Image.open(io.BytesIO(_logo())).convert("RGBA").resize((box[2] - box[0], box[3] - box[1]),
                                                                      Image.Resampling.LANCZOS)
    opaque = np.asarray(rendered)[..., 3] == 255
    patch = out[box[1]:box[3], box[0]:box[2]]
    assert opaque.any() and np.array_equal(patch[opaque], np.asarray(rendered)[..., :3][opaque])
    outside = np.ones((h, w), bool)
    outside[box[1]:box[3], box[0]:box[2]] = False
    assert (out[outside] == 90).all()  # nothing drawn but the logo


def test_a_long_headline_wraps_and_shrinks_inside_the_safe_area_of_each_format():
    font = _font(LATIN)
    text = "Summer collection: light linen shirts for warm evenings by the sea"
    sizes = {}
    for w, h in [(512, 512), (288, 512), (728, 90)]:
        plan = layout(w, h, Overlay(headline=text, font=font))
        left, top, right, bottom = plan.safe
        f = load_font(font, plan.text_px)
        assert " ".join(plan.lines) == text and all(f.getlength(line) <= right - left for line in plan.lines)
        assert top <= plan.text_top and plan.text_top + len(plan.lines) * plan.text_px * 1.15 <= bottom + 1
        sizes[w, h] = (plan.text_px, len(plan.lines))
    assert sizes[288, 512][1] > 1  # the narrow story wraps
    assert sizes[728, 90][0] < sizes[512, 512][0]  # the short banner shrinks it


def test_a_headline_that_cannot_fit_is_refused_not_clipped():
    with pytest.raises(HeadlineDoesNotFit, match=f"does not fit a .* safe area even at {MIN_TEXT_PX} px"):
        layout(300, 60, Overlay(headline="word " * 80, font=_font(LATIN)))


def test_a_chinese_headline_renders_broken_between_characters():
    font = _font(CJK)
    text = "夏季新品上市，轻盈亚麻衬衫，海边温暖夜晚的最佳选择"
    plan = layout(256, 256, Overlay(headline=text, font=font))
    assert "".join(plan.lines) == text and len(plan.lines) > 1
    out = np.asarray(render(_background(256, 256), Overlay(headline=text, font=font, color=(255, 255, 0))))
    band = out[plan.text_top:plan.text_top + len(plan.lines) * plan.text_px]
    assert ((band == [255, 255, 0]).all(axis=2)).sum() > 200  # glyphs drawn, not boxes of nothing
    assert (out[:plan.text_top] == 90).all()
    f = load_font(font, 32)  # real glyphs: two characters differ (a font without them draws the same box)
    assert bytes(f.getmask("夏")) != bytes(f.getmask("海"))
    dejavu = load_font(_font(LATIN), 32)
    assert bytes(dejavu.getmask("夏")) == bytes(dejavu.getmask("海"))  # what the check tells apart


def test_a_file_that_is_not_a_font_is_named():
    with pytest.raises(ValueError, match="not a TrueType or OpenType font file"):
        load_font(b"not a font", 12)


# ---- in a job ------------------------------------------------------------------------------------

def _files(folder: Path) -> None:
    (folder / "logo.png").write_bytes(_logo())
    (folder / "font.ttf").write_bytes(_font(LATIN))


ROWS = {"id": ["mug", "lamp", "long"], "prompt": ["a red mug", "a desk lamp", "a shoe"],
        "style": ["brand", "brand", "brand"],
        "headline": ["Summer sale", None, "an endless headline that goes on " * 30]}
STYLES = {"style": ["brand"], "logo": ["logo.png"], "logo_position": ["bottom-right"], "logo_size": [0.25],
          "headline_font": ["font.ttf"], "headline_color": ["#FFFF00"]}


@pytest.mark.parametrize("column, value, needle", [
    ("logo", "missing.png", "missing.png"),
    ("headline_font", "logo.png", "not a readable font"),
    ("logo_position", "upper-left", "'upper-left' is not a position: one of top-left, top"),
    ("headline_position", "middle", "'middle' is not a position"),
    ("headline_color", "yellow", "'yellow' is not a colour: \"#RRGGBB\""),
    ("logo_size", 0.9, "logo_size must be in (0, 0.5], got 0.9"),
])
def test_bad_overlay_settings_are_named_by_row_column_and_value(tmp_path, column, value, needle):
    from pipeline.errors import ManifestError
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    _files(tmp_path)
    styles = {**STYLES, column: [value]}
    with pytest.raises(ManifestError) as e:
        load_inputs(job(tmp_path, {"id": ["x"], "prompt": ["y"], "style": ["brand"]}, styles=styles))
    (p,) = [p for p in e.value.problems if p.column == column]
    assert p.row == 0 and p.id == "brand" and needle in p.message, p


def test_a_headline_without_a_font_is_named_by_row(tmp_path):
    from pipeline.errors import ManifestError
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    _files(tmp_path)
    with pytest.raises(ManifestError) as e:
        load_inputs(job(tmp_path, {"id": ["x", "y"], "prompt": ["a", "b"], "style": ["plain", "plain"],
                                   "headline": [None, "Big sale"]}, styles={"style": ["plain"]}))
    (p,) = e.value.problems
    assert (p.row, p.id, p.column) == (1, "y", "headline") and "'Big sale': a headline needs its style's" in p.message


@pytest.fixture(scope="module")
def overlaid(tmp_path_factory):
    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job
    from tests.helpers import write_job

    runs = {}
    for name, styles in (("overlay", STYLES), ("plain", {"style": ["brand"]})):
        folder = tmp_path_factory.mktemp(name)
        _files(folder)
        rows = ROWS if name == "overlay" else {k: v for k, v in ROWS.items() if k != "headline"}
        cfg = load_job(write_job(folder, rows, styles=styles, num_candidates=1, keep=1, max_failed_fraction=1.0,
                                 extra="[generate]\nsteps = 2\nwidth = 128\nheight = 128\nbatch_size = 4\n"))
        report = run_job(cfg, backend="in-process")
        runs[name] = (folder, report, pq.read_table(report.output_dir / "results.parquet").to_pylist())
    return runs


def test_the_overlay_is_drawn_on_each_image_in_its_safe_area(overlaid):
    folder, report, rows = overlaid["overlay"]
    drawn = [r for r in rows if r["status"] == "written"]
    assert {r["id"] for r in drawn} == {"mug", "lamp"}
    for r in drawn:
        image = Image.open(report.output_dir / r["path"]).convert("RGB")
        plan = layout(*image.size, Overlay(logo=_logo(), logo_size=0.25, headline=r["headline"],
                                           font=_font(LATIN)))
        x0, y0, x1, y1 = plan.logo_box
        logo = Image.open(io.BytesIO(_logo())).convert("RGBA").resize((x1 - x0, y1 - y0), Image.Resampling.LANCZOS)
        opaque = np.asarray(logo)[..., 3] == 255
        patch = np.asarray(image)[y0:y1, x0:x1]
        assert np.array_equal(patch[opaque], np.asarray(logo)[..., :3][opaque]), (r["id"], r["variant"])
        if r["headline"]:  # the yellow headline drawn in its band
            band = np.asarray(image)[plan.text_top:plan.text_top + len(plan.lines) * plan.text_px]
            yellow = (band[..., 0] > 200) & (band[..., 1] > 200) & (band[..., 2] < 90)
            assert yellow.sum() > 20, yellow.sum()
    assert next(r for r in drawn if r["id"] == "lamp")["headline"] is None  # a row without one: the logo alone


def test_the_judged_image_is_the_one_without_the_overlay(overlaid):
    _, _, with_overlay = overlaid["overlay"]
    _, _, without = overlaid["plain"]
    scores = {(r["id"], r["variant"]): r["clip_score"] for r in without if r["id"] != "long"}
    mine = {(r["id"], r["variant"]): r["clip_score"] for r in with_overlay if r["id"] != "long"}
    assert mine == scores and all(v is not None for v in mine.values())
    assert {r["item_id"] for r in with_overlay}.isdisjoint({r["item_id"] for r in without})  # the overlay names them


def test_a_headline_that_cannot_fit_is_an_error_row_naming_the_column_and_value(overlaid):
    _, _, rows = overlaid["overlay"]
    (r,) = [r for r in rows if r["id"] == "long"]
    assert (r["status"], r["reason_code"]) == ("error", "overlay")
    assert r["reason"].startswith("overlay: column 'headline' 'an endless headline") and "does not fit" in r["reason"]


def test_the_manifest_names_the_logo_as_a_component_and_keeps_the_exact_headline(overlaid):
    import json

    import c2pa

    _, report, rows = overlaid["overlay"]
    r = next(r for r in rows if r["id"] == "mug" and r["variant"] is None)
    store = json.loads(c2pa.Reader(str(report.output_dir / r["path"])).json())
    active = store["manifests"][store["active_manifest"]]
    clean = Path(r["clean_path"]).name
    assert [(i["relationship"], i["title"]) for i in active["ingredients"]] == [("parentOf", clean),
                                                                               ("componentOf", "logo.png")]
    parent = next(i for i in active["ingredients"] if i["relationship"] == "parentOf")
    assert parent["active_manifest"] in store["manifests"]  # the clean image's own manifest, embedded
    overlay = next(a for a in active["assertions"] if a["label"] == "com.asset-pipeline.overlay")["data"]
    assert overlay == {"headline": "Summer sale", "font": "font.ttf", "logo": "logo.png"}
    actions = next(a for a in active["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
    assert actions[1]["description"] == "brand overlay: logo and headline"
    # the clean image: the generation itself, created, with no overlay
    store = json.loads(c2pa.Reader(str(report.output_dir / r["clean_path"])).json())
    active = store["manifests"][store["active_manifest"]]
    labels = [a["label"] for a in active["assertions"]]
    assert "com.asset-pipeline.overlay" not in labels and not active.get("ingredients")


def test_the_clean_image_is_kept_beside_the_overlaid_one_and_verified(overlaid):
    import hashlib

    from pipeline.review.verify import verify_output

    _, report, rows = overlaid["overlay"]
    _, plain_report, plain_rows = overlaid["plain"]
    for r in (r for r in rows if r["status"] == "written"):
        clean = report.output_dir / r["clean_path"]
        assert hashlib.sha256(clean.read_bytes()).hexdigest() == r["clean_sha256"]
        same = next(p for p in plain_rows if p["id"] == r["id"])  # the same generation without an overlay
        assert np.array_equal(np.asarray(Image.open(clean)), np.asarray(Image.open(plain_report.output_dir
                                                                                   / same["path"])))
        assert not np.array_equal(np.asarray(Image.open(clean)), np.asarray(Image.open(report.output_dir / r["path"])))
    problems, checked = verify_output(report.output_dir)
    assert problems == [] and checked == 2 * len([r for r in rows if r["status"] == "written"])


def test_formats_of_overlaid_images_need_the_clean_image_kept(tmp_path):
    """A format is outpainted from its source: from an overlaid one it would carry two overlays."""
    from pipeline.errors import ManifestError
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    _files(tmp_path)
    for extra, styles in (('[formats]\nsizes = ["9:16"]\n', STYLES), ("", {**STYLES, "formats": [["16:9"]]})):
        with pytest.raises(ManifestError) as e:
            load_inputs(job(tmp_path, {"id": ["x"], "prompt": ["y"], "style": ["brand"]}, styles=styles,
                            extra=extra + "[overlay]\nkeep_clean = false\n"))
        (p,) = [p for p in e.value.problems if p.column == "formats"]
        assert p.row == 0 and p.id == "brand" and "set [overlay].keep_clean = true" in p.message


def test_a_format_of_an_overlaid_image_starts_from_its_clean_image_and_gets_its_own_overlay(tmp_path):
    import json

    import c2pa
    import pyarrow.parquet as pq

    from pipeline.plan.canvas import canvas_for
    from pipeline.run.job import run_job
    from pipeline.spec.channel_formats import parse
    from pipeline.spec.load import load_job
    from tests.helpers import write_job

    _files(tmp_path)
    styles = {"style": ["brand"], "logo": ["logo.png"], "logo_size": [0.25], "formats": [["9:16"]]}
    cfg = load_job(write_job(tmp_path, {"id": ["mug"], "prompt": ["a red mug"], "style": ["brand"]}, styles=styles,
                             num_candidates=1, keep=1,
                             extra="[generate]\nsteps = 2\nwidth = 128\nheight = 128\nbatch_size = 4\n"))
    report = run_job(cfg, backend="in-process")
    rows = pq.read_table(report.output_dir / "results.parquet").to_pylist()
    source = next(r for r in rows if r["variant"] is None)
    fmt = next(r for r in rows if r["variant"] == "9:16")
    assert fmt["status"] == "written" and fmt["clean_path"] is not None
    image = np.asarray(Image.open(report.output_dir / fmt["path"]).convert("RGB"))
    clean = np.asarray(Image.open(report.output_dir / source["clean_path"]).convert("RGB"))
    c = canvas_for(128, 128, parse("9:16"))
    left, top, right, bottom = c.box
    x0, y0, x1, y1 = layout(c.width, c.height, Overlay(logo=_logo(), logo_size=0.25)).logo_box
    untouched = np.ones(image.shape[:2], bool)
    untouched[y0:y1, x0:x1] = False  # the format's own logo, laid out for its own canvas
    inside = untouched[top:bottom, left:right]
    assert np.array_equal(image[top:bottom, left:right][inside], clean[inside])  # the clean source, not the overlaid
    # the format's own clean image is exactly the clean source in the middle
    own_clean = np.asarray(Image.open(report.output_dir / fmt["clean_path"]).convert("RGB"))
    assert np.array_equal(own_clean[top:bottom, left:right], clean)
    store = json.loads(c2pa.Reader(str(report.output_dir / fmt["clean_path"])).json())
    active = store["manifests"][store["active_manifest"]]
    assert [(i["relationship"], i["title"]) for i in active["ingredients"]] == [
        ("parentOf", Path(source["clean_path"]).name)]
