"""A model per style: the styles table's `model` / `model_revision` are checked by row, planned
per row (item ids by each model's fingerprint), cut into units of one model each, routed to
actors that hold it, and run in one job (in process here; through Ray in test_style_models_e2e)."""

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from pipeline.errors import ManifestError, ModelLoadError
from pipeline.plan.build import build_plan
from pipeline.plan.models import ModelRef, ModelUse
from pipeline.plan.work import WorkFile, candidates, unnest, write_work
from pipeline.run.job import run_job
from pipeline.run.routing import Router, assign
from pipeline.spec.manifest import load_inputs
from tests.helpers import job

ROWS = {"id": ["a", "b", "c", "d"], "prompt": ["a red mug", "a lamp", "a chair", "a shoe"],
        "style": ["studio", "lifestyle", "studio", None]}
STYLES = {"style": ["studio", "lifestyle"], "model": ["embedded:tiny-sdxl", None]}


def problems(tmp_path, styles):
    with pytest.raises(ManifestError) as e:
        load_inputs(job(tmp_path, {"id": ["x"], "prompt": ["y"], "style": ["a"]}, styles=styles))
    return e.value


@pytest.mark.parametrize("styles, needle", [
    ({"style": ["a"], "model": ["embedded:tiny-sdd"]},
     "model 'embedded:tiny-sdd': unknown embedded model 'tiny-sdd' (did you mean 'embedded:tiny-sd'?)"),
    ({"style": ["a"], "model": ["embedded:tiny-clip"]},
     "model 'embedded:tiny-clip': embedded:tiny-clip is the embedded clip model, not a diffusion model"),
    ({"style": ["a"], "model": ["./brand-checkpoint"]}, "model './brand-checkpoint': no such folder or file"),
    ({"style": ["a"], "model": ["acme/brand-sdxl"], "model_revision": ["v2"]},
     "model 'acme/brand-sdxl' at revision 'v2': not a local folder, and not in the local Hugging Face cache"),
    ({"style": ["a"], "model": ["not a hub id!"]}, "model 'not a hub id!': neither a local folder nor a hub id"),
])
def test_a_style_model_that_is_not_there_is_named_by_row_style_and_value(tmp_path, styles, needle):
    err = problems(tmp_path, styles)
    p = next(p for p in err.problems if p.column == "model")
    assert p.row == 0 and p.id == "a" and needle in p.message, p
    assert "styles.parquet, row 0 (id 'a'), column 'model'" in str(err)


def test_a_model_revision_without_a_model_is_named(tmp_path):
    err = problems(tmp_path, {"style": ["a"], "model_revision": ["main"]})
    p = next(p for p in err.problems if p.column == "model_revision")
    assert "model_revision pins the style's own model: give its model too" in p.message


def test_a_style_model_folder_resolves_against_the_styles_file(tmp_path):
    from pipeline.models.embedded import ensure

    shutil.copytree(ensure("tiny-sd"), tmp_path / "brand-sd")
    cfg = job(tmp_path, ROWS, styles={"style": ["studio", "lifestyle"], "model": ["brand-sd", None]})
    plan = build_plan(load_inputs(cfg), cfg).to_pylist()
    assert {r["style"]: r["model"] for r in plan} == {"studio": str(tmp_path / "brand-sd"),
                                                      "lifestyle": "embedded:tiny-sd", None: "embedded:tiny-sd"}


def test_each_row_is_planned_on_its_styles_model_and_named_by_its_fingerprint(tmp_path):
    cfg = job(tmp_path / "mixed", ROWS, styles=STYLES, num_candidates=2, keep=1)
    plan = build_plan(load_inputs(cfg), cfg).to_pylist()
    by_style = {r["style"]: (r["model"], r["model_revision"]) for r in plan}
    assert by_style == {"studio": ("embedded:tiny-sdxl", None), "lifestyle": ("embedded:tiny-sd", None),
                        None: ("embedded:tiny-sd", None)}
    # the same rows with no style models: only the studio rows' item ids change
    same = job(tmp_path / "one", ROWS, styles={"style": ["studio", "lifestyle"]}, num_candidates=2, keep=1)
    before = {(r["id"], r["candidate"]): r["item_id"] for r in build_plan(load_inputs(same), same).to_pylist()}
    for r in plan:
        assert (r["item_id"] == before[(r["id"], r["candidate"])]) == (r["style"] != "studio"), r


def test_units_hold_one_model_each_and_come_a_model_then_a_style_at_a_time(tmp_path):
    styles = {"style": ["s1", "s2", "s3"], "model": ["embedded:tiny-sdxl", None, "embedded:tiny-sdxl"]}
    rows = {"id": [f"r{i}" for i in range(9)], "prompt": ["p"] * 9, "style": ["s1", "s2", "s3"] * 3}
    cfg = job(tmp_path, rows, styles=styles, num_candidates=2, keep=1)
    plan = build_plan(load_inputs(cfg), cfg)
    index = write_work([candidates(plan)], tmp_path / "w.arrow", 2)
    units = [unnest(u).to_pylist() for u in WorkFile(tmp_path / "w.arrow")]
    assert [str(m) for m in index.models] == ["embedded:tiny-sd", "embedded:tiny-sdxl"]
    assert len(index) == len(units) == 2 + 3  # s2's 3 rows → 2 units; s1 + s3's 6 rows → 3
    for unit, model in zip(units, index.unit_model, strict=True):
        assert {ModelRef(c["model"], c["model_revision"]) for c in unit} == {index.models[model]}
    styles_in_order = [c["style"] for u in units for c in u]
    assert styles_in_order == ["s2"] * 6 + ["s1"] * 6 + ["s3"] * 6  # a model, then a style, at a time
    assert sorted(c["item_id"] for u in units for c in u) == sorted(plan["item_id"].to_pylist())
    assert index.weight == [3 * 2 * 2 * 64 * 64, 6 * 2 * 2 * 64 * 64]  # rows × candidates × steps × pixels
    assert [u.styles for u in index.uses] == [("s2",), ("s1", "s3")]
    assert not any(u.style_images or u.structure_images for u in index.uses)


@pytest.mark.parametrize("actors, weights, held", [
    (1, [1.0, 3.0], [[0, 1]]),  # one actor holds both
    (2, [1.0, 3.0], [[0], [1]]),  # one each, at least
    (6, [1.0, 3.0], [[0], [0], [1], [1], [1], [1]]),  # the 4 spare actors shared 1:3
    (3, [5.0, 1.0, 1.0, 1.0], [[0], [1, 3], [2]]),  # fewer actors: the heaviest alone
    (3, [0.0, 0.0], [[0], [0], [1]]),  # no weights (all prior): shared evenly
])
def test_pools_are_sized_by_each_models_share_with_one_actor_each_at_least(actors, weights, held):
    assert assign(actors, weights) == held


def test_an_actor_that_holds_several_models_takes_their_units_a_model_at_a_time():
    router = Router([0, 1, 0, 1, 1, 0], [[0, 1]])
    taken = [router.next_for(0) for _ in range(6)]
    assert taken == [0, 2, 5, 1, 3, 4] and router.next_for(0) is None and not router.left()
    two = Router([0, 1, 0, 1], [[0], [1]])
    assert (two.next_for(1), two.next_for(0), two.has_for(0), two.holders(1)) == (1, 0, True, [1])
    with pytest.raises(ValueError, match="no actor holds"):
        Router([0, 1], [[0]])


def test_one_job_mixes_two_models_in_process_and_records_each(tmp_path):
    cfg = job(tmp_path, ROWS, styles=STYLES, num_candidates=2, keep=1,
              extra="[output]\nwrite_rejected = true\n")
    report = run_job(cfg, backend="local")
    assert report.exit_code == 0, report.summary
    table = pq.read_table(report.output_dir / "results.parquet").to_pylist()
    assert {r["status"] for r in table} <= {"written", "rejected"}
    assert {(r["style"], r["model"]) for r in table} == {
        ("studio", "embedded:tiny-sdxl"), ("lifestyle", "embedded:tiny-sd"), (None, "embedded:tiny-sd")}
    assert {r["scheduler"] for r in table} == {"EulerDiscreteScheduler"}
    record = json.loads(next((report.output_dir / "_runs").glob("*.json")).read_text())
    assert record["models"]["styles"] == {"studio": {"spec": "embedded:tiny-sdxl", "revision": None,
                                                     "fingerprint": "embedded:tiny-sdxl@v1"}}
    assert record["models"]["diffusion"]["fingerprint"] == "embedded:tiny-sd@v1"
    # SDXL's images: a different model made them (they are not tiny-sd's images of the same rows)
    sdxl = [np.asarray(__import__("PIL.Image").Image.open(report.output_dir / r["path"]))
            for r in table if r["style"] == "studio" and r["path"]]
    assert sdxl and all(img.shape == (64, 64, 3) for img in sdxl)


def test_an_actor_holding_more_models_than_it_keeps_loads_each_again_only_when_needed(tmp_path):
    from pipeline.stages.candidate import CandidateStage

    cfg = job(tmp_path, ROWS, styles=STYLES, num_candidates=1, keep=1)
    refs = {ModelRef("embedded:tiny-sd"): ModelUse(("lifestyle",)),
            ModelRef("embedded:tiny-sdxl"): ModelUse(("studio",))}
    stage = CandidateStage(cfg, refs)  # loads both (each must load), keeps the first one needed
    assert stage.generators.loads == 2 and stage.generators.held() == [ModelRef("embedded:tiny-sd")]
    plan = build_plan(load_inputs(cfg), cfg)
    index = write_work([candidates(plan)], tmp_path / "w.arrow", 1)
    for unit in WorkFile(tmp_path / "w.arrow"):  # a model at a time: one switch back to tiny-sd
        stage(unit)
    assert stage.generators.loads == 3 and len(index) == 4


def test_a_style_model_that_cannot_load_stops_the_run_naming_its_style(tmp_path):
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "model_index.json").write_text("{}")
    cfg = job(tmp_path, ROWS, styles={"style": ["studio", "lifestyle"], "model": ["./broken", None]})
    with pytest.raises(ModelLoadError, match=r"^style\(s\) studio: cannot load diffusion model '.*broken'"):
        run_job(cfg, backend="local")
    assert not (tmp_path / "out" / "results.parquet").exists()


def test_plan_prices_each_model_at_its_own_throughput(tmp_path):
    from pipeline.review.cost import estimate

    rate = '[[cost.throughput]]\nmodel = "{}"\nwidth = 64\nheight = 64\nsteps = 2\nseconds_per_image = {}\n'
    cost = "[cost]\ngpu_hour_usd = 3.6\ngpus = 1\n" + rate.format("embedded:tiny-sd", 1.0) + rate.format(
        "embedded:tiny-sdxl", 3.0)
    cfg = job(tmp_path, ROWS, styles=STYLES, num_candidates=1, keep=1, extra=cost)
    lines = {(x["style"], x["model"]): x["gpu_s"] for x in estimate(build_plan(load_inputs(cfg), cfg), cfg)}
    assert lines == {("studio", "embedded:tiny-sdxl"): 6.0, ("lifestyle", "embedded:tiny-sd"): 1.0,
                     ("-", "embedded:tiny-sd"): 1.0, ("total", ""): 8.0}


def test_models_per_actor_must_be_at_least_one(tmp_path):
    from pipeline.errors import ConfigError

    with pytest.raises(ConfigError, match=r"\[cluster\].models_per_actor must be"):
        job(tmp_path, ROWS, styles=STYLES, extra="[cluster]\nmodels_per_actor = 0\n")
