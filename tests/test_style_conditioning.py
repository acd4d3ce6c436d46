"""A style image (IP-Adapter) and a structure image (ControlNet) per style: checked by row,
column and value; planned with their weights; part of the item id by content only where used."""

import pyarrow as pa
import pytest
from PIL import Image

from pipeline.errors import ConfigError, ManifestError
from pipeline.plan.build import build_plan
from pipeline.spec.manifest import load_inputs
from tests.helpers import job

ADAPTERS = '[models]\nip_adapter = "embedded:tiny-ip-adapter"\ncontrolnet = "embedded:tiny-controlnet"\n'
ROWS = {"id": ["a", "b", "c"], "prompt": ["a mug", "a lamp", "a shoe"], "style": ["look", "plain", None]}


def image(path, color=(200, 30, 30), size=(48, 40)):
    Image.new("RGB", size, color).save(path)
    return path.name


def problems(tmp_path, styles, extra=ADAPTERS):
    with pytest.raises(ManifestError) as e:
        load_inputs(job(tmp_path, {"id": ["x"], "prompt": ["y"], "style": ["a"]}, styles=styles, extra=extra))
    return e.value


@pytest.mark.parametrize("column, value, extra, needle", [
    ("style_image", "missing.png", ADAPTERS, "missing.png"),
    ("structure_image", "missing.png", ADAPTERS, "missing.png"),
    ("style_image", "look.png", "", "'look.png' needs [models].ip_adapter (the IP-Adapter and its image encoder; "
                                    "embedded:tiny-ip-adapter for the embedded models)"),
    ("structure_image", "look.png", "", "'look.png' needs [models].controlnet (the ControlNet; "
                                        "embedded:tiny-controlnet for the embedded models)"),
    ("style_image_scale", 2.5, ADAPTERS, "style_image_scale must be 0..2, got 2.5"),
    ("structure_scale", -1.0, ADAPTERS, "structure_scale must be 0..2, got -1.0"),
])
def test_bad_style_and_structure_images_are_named_by_row_column_and_value(tmp_path, column, value, extra, needle):
    image(tmp_path / "look.png")
    styles = {"style": ["a"], column: [value]}
    if column.endswith("_scale"):
        styles["style_image" if column.startswith("style") else "structure_image"] = ["look.png"]
    err = problems(tmp_path, styles, extra)
    p = next(p for p in err.problems if p.column == column)
    assert p.row == 0 and p.id == "a" and needle in p.message, p


def test_not_an_image_is_named(tmp_path):
    (tmp_path / "look.png").write_bytes(b"not an image")
    err = problems(tmp_path, {"style": ["a"], "style_image": ["look.png"]})
    assert any(p.column == "style_image" and "look.png" in p.message for p in err.problems), err


@pytest.mark.parametrize("key", ["ip_adapter", "controlnet"])
def test_an_embedded_adapter_of_the_wrong_kind_is_named_in_the_job_file(tmp_path, key):
    with pytest.raises(ConfigError, match=rf"\[models\].{key}: embedded:tiny-sd is the embedded diffusion model"):
        job(tmp_path, ROWS, extra=f'[models]\n{key} = "embedded:tiny-sd"\n')


def test_planned_with_their_weights_and_named_by_content_where_used(tmp_path):
    image(tmp_path / "look.png")
    image(tmp_path / "layout.png", (10, 10, 10))
    styles = {"style": ["look", "plain"], "style_image": ["look.png", None], "structure_image": ["layout.png", None],
              "structure_scale": [0.5, None]}
    cfg = job(tmp_path / "x", ROWS, styles={"style": ["look", "plain"]}, extra=ADAPTERS)  # no conditioning
    plain = {r["id"]: r["item_id"] for r in build_plan(load_inputs(cfg), cfg).to_pylist()}

    def plan(folder):
        cfg = job(folder, {**ROWS, "style": ["look", "plain", None]}, styles=styles, extra=ADAPTERS)
        return {r["id"]: r for r in build_plan(load_inputs(cfg), cfg).to_pylist()}

    got = plan(tmp_path)
    a = got["a"]
    assert a["style_image"] == str(tmp_path / "look.png") and a["style_image_scale"] == 0.6  # [generate]'s default
    assert a["structure_image"] == str(tmp_path / "layout.png") and a["structure_scale"] == 0.5
    assert got["b"]["style_image"] is got["b"]["style_image_scale"] is got["b"]["structure_scale"] is None
    # rows without conditioning keep the ids they had before the columns existed
    assert got["b"]["item_id"] == plain["b"] and got["c"]["item_id"] == plain["c"]
    assert got["a"]["item_id"] != plain["a"]
    # a style image is named by its content: the same picture elsewhere keeps the id, another changes it
    moved = tmp_path / "moved"
    moved.mkdir()
    image(moved / "look.png")
    image(moved / "layout.png", (10, 10, 10))
    assert plan(moved)["a"]["item_id"] == a["item_id"]
    image(moved / "look.png", (30, 200, 30))
    assert plan(moved)["a"]["item_id"] != a["item_id"]


def _run(folder, rows, styles, only=()):
    from pipeline.run.job import run_job

    extra = ADAPTERS + "[output]\nwrite_rejected = true\n"
    cfg = job(folder, rows, styles=styles, num_candidates=1, keep=1, extra=extra)
    report = run_job(cfg, backend="local", rows=only)
    assert report.exit_code == 0, report.summary
    import pyarrow.parquet as pq

    return report, {r["id"]: r for r in pq.read_table(report.output_dir / "results.parquet").to_pylist()}


def _pixels(report, r):
    import numpy as np

    return np.asarray(Image.open(report.output_dir / r["path"])).astype(int)


def test_style_and_structure_images_steer_the_pixels_and_the_same_ones_reproduce_them(tmp_path):
    import numpy as np

    image(tmp_path / "warm.png", (230, 120, 20))
    image(tmp_path / "cold.png", (20, 120, 230))
    box = Image.new("RGB", (64, 64), (0, 0, 0))
    box.paste((255, 255, 255), (16, 16, 48, 48))
    box.save(tmp_path / "box.png")
    bars = Image.new("RGB", (64, 64), (0, 0, 0))
    for x in range(0, 64, 16):
        bars.paste((255, 255, 255), (x, 0, x + 8, 64))
    bars.save(tmp_path / "bars.png")
    at = lambda name: str(tmp_path / name) if name else None  # noqa: E731 — the --rows run has another folder
    styles = {"style": ["plain", "warm", "warm-too", "cold", "box", "box-too", "bars"],
              "style_image": list(map(at, [None, "warm.png", "warm.png", "cold.png", None, None, None])),
              "structure_image": list(map(at, [None, None, None, None, "box.png", "box.png", "bars.png"]))}
    rows = {"id": styles["style"], "prompt": ["a ceramic mug"] * 7, "style": styles["style"],
            "seed": pa.array([7] * 7, pa.int64())}  # one seed: only the conditioning differs
    report, got = _run(tmp_path, rows, styles)
    px = {i: _pixels(report, r) for i, r in got.items()}
    assert got["warm"]["style_image"] == str(tmp_path / "warm.png") and got["box"]["structure_scale"] == 1.0
    assert np.array_equal(px["warm"], px["warm-too"]) and np.array_equal(px["box"], px["box-too"])
    for a, b in [("plain", "warm"), ("warm", "cold"), ("plain", "box"), ("box", "bars")]:
        assert np.abs(px[a] - px[b]).max() > 8, (a, b)
    # each row regenerated alone, beside no batch mate and no other style: the same pixels
    alone, one = _run(tmp_path / "alone", rows, styles, only=("plain", "warm", "box"))
    for i in ("plain", "warm", "box"):
        assert one[i]["item_id"] == got[i]["item_id"]
        assert np.abs(_pixels(alone, one[i]) - px[i]).max() <= 2, i
    figures = report.summary["brand_consistency"]
    assert figures["warm"]["style_image_similarity"] == round(got["warm"]["style_image_similarity"], 4)
    assert "style_image_similarity" not in figures["plain"]


def test_a_staged_product_takes_a_style_image_and_keeps_its_pixels(tmp_path):
    import numpy as np

    from tests.helpers import save_cutout

    cutout = save_cutout(tmp_path / "cutout.png")
    image(tmp_path / "warm.png", (230, 120, 20))
    rows = {"id": ["p"], "prompt": ["a bottle"], "style": ["warm"], "product_image": [str(cutout)]}
    report, got = _run(tmp_path, rows, {"style": ["warm"], "style_image": ["warm.png"]})
    assert got["p"]["mode"] == "inpaint" and got["p"]["status"] == "written"
    out = _pixels(report, got["p"])
    product = np.asarray(Image.open(cutout).convert("RGBA"))
    # the opaque box of the cut-out, placed as staging places it: the same pixels came back
    assert (out == [20, 200, 20]).all(axis=2).sum() >= (product[:, :, 3] == 255).sum()


def _plan_problems(tmp_path, rows, styles):
    with pytest.raises(ManifestError) as e:
        cfg = job(tmp_path, rows, styles=styles, extra=ADAPTERS)
        build_plan(load_inputs(cfg), cfg)
    return e.value


def test_a_structure_image_in_a_mode_the_family_does_not_steer_is_named_by_row_column_and_value(tmp_path):
    """SD3 has a ControlNet pipeline for text-to-image only; FLUX's image-to-image and inpainting
    ControlNet pipelines take no IP-Adapter, so not on a model that carries one."""
    from tests.helpers import save_cutout

    image(tmp_path / "look.png")
    cutout = save_cutout(tmp_path / "cutout.png")
    rows = {"id": ["t", "s", "f", "g"], "prompt": ["a mug"] * 4, "style": ["sd3", "sd3", "flux", "flux-look"],
            "product_image": [None, str(cutout), str(cutout), None]}
    styles = {"style": ["sd3", "flux", "flux-look"], "model": ["embedded:tiny-sd3", "embedded:tiny-flux",
                                                               "embedded:tiny-flux"],
              "structure_image": ["look.png", "look.png", "look.png"], "style_image": [None, None, "look.png"]}
    err = _plan_problems(tmp_path, rows, styles)
    found = {p.id: p for p in err.problems}
    assert set(found) == {"s", "f"}, err  # text-to-image rows of either family are taken
    assert (found["s"].row, found["s"].column) == (1, "structure_image")
    assert found["s"].message.startswith("model 'embedded:tiny-sd3' (sd3) takes a structure image in t2i only, "
                                         "and this row is inpaint: '")  # then the value (shortened when long)
    assert (found["f"].row, found["f"].column) == (2, "structure_image")
    assert ("model 'embedded:tiny-flux' (flux) takes a structure image while it carries an IP-Adapter "
            "(style 'flux-look' has a style image) in t2i only, and this row is inpaint") in found["f"].message


def test_flux_takes_a_structure_image_in_every_mode_without_an_ip_adapter(tmp_path):
    from tests.helpers import save_cutout

    image(tmp_path / "look.png")
    cutout = save_cutout(tmp_path / "cutout.png")
    rows = {"id": ["t", "f"], "prompt": ["a mug"] * 2, "style": ["flux"] * 2, "product_image": [None, str(cutout)]}
    styles = {"style": ["flux", "unused"], "model": ["embedded:tiny-flux"] * 2,
              "structure_image": ["look.png", None], "style_image": [None, "look.png"]}  # "unused" loads nothing
    cfg = job(tmp_path, rows, styles=styles, extra=ADAPTERS)
    plan = build_plan(load_inputs(cfg), cfg)
    assert sorted(set(plan["mode"].to_pylist())) == ["inpaint", "t2i"]


@pytest.mark.parametrize("key, value, needle", [
    ("style_image_scale", 3.0, "[generate].style_image_scale must be 0..2, got 3.0"),
    ("structure_scale", -0.5, "[generate].structure_scale must be 0..2, got -0.5"),
    ("true_cfg_scale", 500.0, "[generate].true_cfg_scale must be 0..100, got 500.0"),
])
def test_the_job_defaults_of_the_new_weights_are_checked_by_key_and_value(tmp_path, key, value, needle):
    with pytest.raises(ConfigError) as e:
        job(tmp_path, ROWS, extra=f"[generate]\nsteps = 2\nwidth = 64\nheight = 64\n{key} = {value}\n")
    assert needle in str(e.value)
