"""A reviewer's decisions applied with `run --decisions FILE`: approve locks an image, reject takes
it out (the runner-up, or a new round of fresh seeds, takes its place), refine makes a new image
from the chosen one whose C2PA manifest names it as `parentOf`; the same file twice changes
nothing. (The round trip through the report page in a browser is in test_report.py.)"""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.errors import EXIT_OK, ManifestError
from pipeline.review.verify import verify_output
from pipeline.run.job import run_job
from pipeline.spec import vocabulary
from pipeline.spec.load import load_job
from pipeline.stages.product import prepare_inputs
from pipeline.storage import tables
from pipeline.storage.layout import DECISIONS, RESULTS
from tests.helpers import save_cutout, write_job

ROWS = {"id": ["a", "b", "c"], "prompt": ["a red mug", "a blue shoe", "a desk lamp"], "sku": ["A1", "B2", "C3"]}
STYLES = {"style": ["brand"], "prompt_template": ["{prompt}, brand look"]}


@pytest.fixture(scope="module")
def reviewed_once(tmp_path_factory):
    """A finished run (3 rows, 2 candidates, keep 1) to make decisions on; tests work on copies."""
    folder = tmp_path_factory.mktemp("reviewed")
    rows = {**ROWS, "style": ["brand"] * 3}
    run_job(load_job(write_job(folder, rows, styles=STYLES, num_candidates=2, keep=1)), backend="in-process")
    return folder


@pytest.fixture
def job(reviewed_once, tmp_path):
    shutil.copytree(reviewed_once, tmp_path / "job")
    return tmp_path / "job" / "job.toml"


def results(out: Path) -> dict[tuple[str, int], dict]:
    return {(r["id"], r["candidate"]): r for r in pq.read_table(out / RESULTS).to_pylist()}


def images(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in (out / "images").rglob("*.png")}


def apply(job: Path, decisions: list[dict], name: str = "decisions.json", **overrides):
    path = job.parent / name
    if name.endswith(".json"):
        path.write_text(json.dumps(decisions))
    else:
        columns = ["item_id", "decision", "note", "prompt", "strength"]
        path.write_text("\n".join([",".join(columns)] + [",".join(str(d.get(c) if d.get(c) is not None else "")
                                                                   for c in columns) for d in decisions]) + "\n")
    cfg = load_job(job)
    for section, keys in overrides.items():
        cfg = cfg.replace(section, **keys)
    report = run_job(cfg, backend="in-process", decisions=str(path))
    return report, results(report.output_dir)


def pick(rows: dict, row_id: str) -> dict:
    (r,) = [r for (i, _), r in rows.items() if i == row_id and r["status"] == vocabulary.WRITTEN]
    return r


def test_reject_promotes_the_runner_up_approve_is_untouched_and_the_file_again_changes_nothing(job, model_calls):
    out = job.parent / "out"
    before, files_before = results(out), images(out)
    rejected, approved = pick(before, "a"), pick(before, "b")
    (runner_up,) = [r for (i, _), r in before.items() if i == "a" and r["status"] != vocabulary.WRITTEN]
    # as a spreadsheet saves it: a byte-order mark, capitals, spaces around values
    (job.parent / "decisions.csv").write_bytes("\ufeffitem_id,decision,note,prompt,strength\r\n".encode()
                                               + f" {rejected['item_id']} ,Reject,off brand,,\r\n".encode()
                                               + f"{approved['item_id']},APPROVE,hero shot,,\r\n".encode())
    report = run_job(load_job(job), backend="in-process", decisions=str(job.parent / "decisions.csv"))
    after = results(report.output_dir)
    assert report.exit_code == EXIT_OK
    r = after["a", rejected["candidate"]]
    assert r["status"] == "rejected" and r["reason"] == "reviewer_rejected" and r["path"] is None
    assert (r["decision"], r["note"]) == ("reject", "off brand") and r["decided_at"] is not None
    assert not (out / rejected["path"]).exists()  # gone from the selection and the folder
    promoted = after["a", runner_up["candidate"]]
    assert promoted["status"] == "written" and promoted["clip_score"] == runner_up["clip_score"]
    assert model_calls == {"generated": 1, "measured": 0}  # the runner-up, from its seed; nothing measured
    a = after["b", approved["candidate"]]
    assert (a["status"], a["decision"], a["note"]) == ("written", "approve", "hero shot")
    assert images(out)[a["path"]] == files_before[a["path"]]  # the approved image is untouched
    assert after["c", pick(before, "c")["candidate"]]["decision"] is None
    assert verify_output(out) == ([], 3)
    # The same file again: nothing recorded, judged or generated; the same results and files.
    parts = sorted((out / DECISIONS).iterdir())
    model_calls.update(generated=0, measured=0)
    again, rows = apply(job, [{"item_id": rejected["item_id"], "decision": "reject", "note": "off brand"},
                              {"item_id": approved["item_id"], "decision": "approve", "note": "hero shot"}],
                        name="decisions.csv")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {}
    assert rows == after and images(out) == images(out) and sorted((out / DECISIONS).iterdir()) == parts
    assert model_calls == {"generated": 0, "measured": 0}


def test_rejecting_every_candidate_of_a_row_generates_a_new_round_with_fresh_derived_seeds(job):
    out = job.parent / "out"
    before = results(out)
    row_a = [r for (i, _), r in before.items() if i == "a"]
    report, after = apply(job, [{"item_id": r["item_id"], "decision": "reject"} for r in row_a])
    assert report.exit_code == EXIT_OK
    new = [r for (i, k), r in after.items() if i == "a" and k >= 2]
    assert sorted(r["candidate"] for r in new) == [2, 3]
    assert {r["seed"] for r in new}.isdisjoint(r["seed"] for r in row_a)
    assert all(r["seed_source"] == "derived" and r["sku"] == "A1" for r in new)
    assert sum(r["status"] == "written" for r in new) == 1
    assert all(after["a", r["candidate"]]["reason"] == "reviewer_rejected" for r in row_a)
    assert verify_output(out) == ([], 3)
    # The new round is planned (the seeds of candidates 2 and 3), so a rerun finds it done, and
    # `plan` lists what the next run plans.
    again = run_job(load_job(job), backend="in-process")
    assert again.exit_code == EXIT_OK and again.summary["this_run"] == {} and results(out) == after
    assert main(["plan", str(job), "--out", str(job.parent / "plan.parquet")]) == EXIT_OK
    planned = pq.read_table(job.parent / "plan.parquet").to_pylist()
    assert [(r["id"], r["candidate"], r["item_id"]) for r in planned] == \
        [(i, k, r["item_id"]) for (i, k), r in after.items()]
    # A note added to the same rejects asks for nothing new: no further round, even while the row
    # is short (a CLIP threshold no image reaches).
    run_job(load_job(job).replace("filter", clip_threshold=99.0), backend="in-process")
    _, noted = apply(job, [{"item_id": r["item_id"], "decision": "reject", "note": "off brand"} for r in row_a],
                     name="noted.json", filter={"clip_threshold": 99.0})
    assert not [r for (i, _), r in noted.items() if i == "a" and r["status"] == "written"]
    assert len([k for (i, k) in noted if i == "a"]) == 4 and noted["a", 0]["note"] == "off brand"


def test_approval_locks_an_image_against_rejudging_and_takes_a_place_first(job, model_calls):
    out = job.parent / "out"
    before = results(out)
    top = pick(before, "a")
    (runner_up,) = [r for (i, _), r in before.items() if i == "a" and r["status"] != vocabulary.WRITTEN]
    report, after = apply(job, [{"item_id": top["item_id"], "decision": "approve"},
                                {"item_id": runner_up["item_id"], "decision": "approve"}])
    assert report.exit_code == EXIT_OK
    assert {after["a", k]["status"] for k in (0, 1)} == {"written"}  # approvals keep places past `keep`
    assert model_calls["measured"] == 0 and model_calls["generated"] == 1  # the runner-up, from its seed
    # A CLIP threshold no image reaches: the approved ones stay, the others lose their places.
    rerun = run_job(load_job(job).replace("filter", clip_threshold=99.0), backend="in-process")
    rows = results(rerun.output_dir)
    assert {rows["a", k]["status"] for k in (0, 1)} == {"written"}
    assert all(r["status"] == "rejected" and r["reason"].startswith("below_clip_threshold")
               for (i, _), r in rows.items() if i != "a")
    assert verify_output(out) == ([], 2)
    # Approving only the runner-up of a row that keeps one: it takes the place, the pick gives it up.
    (approved,) = [r for (i, _), r in before.items() if i == "b" and r["status"] != "written"]
    _, after = apply(job, [{"item_id": approved["item_id"], "decision": "approve"}], name="b.json",
                     filter={"clip_threshold": 0.0})
    assert after["b", approved["candidate"]]["status"] == "written"
    former = after["b", pick(before, "b")["candidate"]]
    assert former["status"] == "rejected" and former["reason"] == "not_selected" and former["path"] is None


def test_approval_never_passes_moderation_even_after_a_reject(job):
    """A candidate moderation blocked cannot be approved (or refined), whatever reason a reviewer's
    reject wrote over it since."""
    blocked = {"filter": {"blocked_terms": ["lamp"]}}
    cfg = load_job(job).replace("filter", blocked_terms=["lamp"])
    rows = results(run_job(cfg, backend="in-process").output_dir)
    c0 = rows["c", 0]
    assert c0["reason"].startswith("prompt_blocked") and c0["moderation"] == "block"
    _, rows = apply(job, [{"item_id": c0["item_id"], "decision": "reject"}], **blocked)
    assert rows["c", 0]["reason"] == "reviewer_rejected"
    for decision in ("approve", "refine"):
        with pytest.raises(ManifestError, match=f"row 0 .*cannot {decision} a candidate moderation blocked"):
            apply(job, [{"item_id": c0["item_id"], "decision": decision}], name="again.json", **blocked)


@pytest.fixture
def img2img_starts(monkeypatch):
    """The start images the image-to-image pipeline is given (in-process runs)."""
    import functools

    from diffusers import StableDiffusionImg2ImgPipeline

    starts, call = [], StableDiffusionImg2ImgPipeline.__call__

    @functools.wraps(call)
    def recorded(self, *args, **kwargs):
        starts.extend(np.asarray(im.convert("RGB")) for im in kwargs["image"])
        return call(self, *args, **kwargs)

    monkeypatch.setattr(StableDiffusionImg2ImgPipeline, "__call__", recorded)
    return starts


def test_refine_makes_an_image_from_the_chosen_one_whose_c2pa_names_it_parent_of(job, img2img_starts):
    import c2pa

    out = job.parent / "out"
    chosen = pick(results(out), "c")
    report, after = apply(job, [{"item_id": chosen["item_id"], "decision": "refine", "prompt": "a desk lamp at dusk",
                                 "strength": 0.5, "note": "warmer"}])
    assert report.exit_code == EXIT_OK
    parent = after["c", chosen["candidate"]]
    assert (parent["status"], parent["reason"], parent["decision"]) == ("rejected", "reviewer_refined", "refine")
    assert (out / parent["path"]).exists()  # the earlier round's image stays: its refinement names it
    (child,) = [r for r in after.values() if r["parent"] == chosen["item_id"]]
    assert child["status"] == "written" and child["mode"] == "img2img" and child["strength"] == 0.5
    assert child["source_prompt"] == "a desk lamp at dusk" and child["prompt"] == "a desk lamp at dusk, brand look"
    assert child["seed_source"] == "refine" and child["candidate"] == 2 and child["sku"] == "C3"
    manifest = c2pa.Reader("image/png", io.BytesIO((out / child["path"]).read_bytes())).get_active_manifest()
    (ingredient,) = manifest["ingredients"]
    assert ingredient["relationship"] == "parentOf"
    assert ingredient["title"] == Path(parent["path"]).name
    assert ingredient["active_manifest"] == parent["c2pa_label"]  # the chain of review rounds
    assert verify_output(out) == ([], 4)
    # It starts from the chosen image's pixels.
    (start,) = img2img_starts
    assert (start == np.asarray(Image.open(out / parent["path"]).convert("RGB"))).all()
    # A refinement of the refinement chains on.
    report, again = apply(job, [{"item_id": child["item_id"], "decision": "refine"}], name="second.json")
    (grandchild,) = [r for r in again.values() if r["parent"] == child["item_id"]]
    assert grandchild["status"] == "written" and grandchild["strength"] == 0.5  # [generate].refine_strength
    assert again["c", child["candidate"]]["reason"] == "reviewer_refined"
    assert verify_output(out) == ([], 5)


def test_a_refinement_that_fails_leaves_the_chosen_image_in_place_and_a_rejected_one_gives_it_back(job):
    out = job.parent / "out"
    chosen = pick(results(out), "c")
    blocked = {"filter": {"blocked_terms": ["forbidden"]}}
    # The new prompt is blocked: the refinement is never generated, the chosen image stays.
    _, after = apply(job, [{"item_id": chosen["item_id"], "decision": "refine", "prompt": "a forbidden lamp"}],
                     **blocked)
    (failed,) = [r for r in after.values() if r["parent"] == chosen["item_id"]]
    assert failed["status"] == "rejected" and failed["reason"].startswith("prompt_blocked")
    kept = after["c", chosen["candidate"]]
    assert (kept["status"], kept["decision"]) == ("written", "refine") and (out / kept["path"]).exists()
    # Asked again with another prompt: a second refinement; the first stays in the results.
    _, after = apply(job, [{"item_id": chosen["item_id"], "decision": "refine", "prompt": "a brass lamp"}],
                     name="second.json", **blocked)
    refinements = [r for r in after.values() if r["parent"] == chosen["item_id"]]
    assert sorted(r["source_prompt"] for r in refinements) == ["a brass lamp", "a forbidden lamp"]
    (good,) = [r for r in refinements if r["status"] == "written"]
    assert after["c", chosen["candidate"]]["reason"] == "reviewer_refined"
    # The reviewer rejects the refinement, and the row's runner-up: the chosen image (its file
    # kept) is back in its place, so the row is not short and no new round is asked for.
    (runner_up,) = [r for (i, _), r in after.items() if i == "c" and r["parent"] is None
                    and r["item_id"] != chosen["item_id"]]
    _, after = apply(job, [{"item_id": good["item_id"], "decision": "reject"},
                           {"item_id": runner_up["item_id"], "decision": "reject"}], name="third.json", **blocked)
    assert after["c", chosen["candidate"]]["status"] == "written" and after["c", good["candidate"]]["path"] is None
    assert len([k for (i, k) in after if i == "c"]) == 4  # two candidates, two refinements: no new round
    assert verify_output(out) == ([], 3)


def test_refining_an_approved_image_keeps_it_approved_until_rejected(job):
    """An approval stands through a later refine: the approved image stays locked while its
    refinement is made (here the refinement fails), and the same file again records nothing."""
    out = job.parent / "out"
    (runner_up,) = [r for (i, _), r in results(out).items() if i == "c" and r["status"] != "written"]
    blocked = {"filter": {"blocked_terms": ["forbidden"]}}
    apply(job, [{"item_id": runner_up["item_id"], "decision": "approve"}], **blocked)
    refine = [{"item_id": runner_up["item_id"], "decision": "refine", "prompt": "a forbidden lamp"}]
    _, after = apply(job, refine, name="refine.json", **blocked)
    approved = after["c", runner_up["candidate"]]
    assert (approved["status"], approved["decision"]) == ("written", "approve")
    (child,) = [r for r in after.values() if r["parent"] == runner_up["item_id"]]
    assert child["reason"].startswith("prompt_blocked")
    parts = sorted((out / DECISIONS).iterdir())
    again, rows = apply(job, refine, name="refine.json", **blocked)
    assert sorted((out / DECISIONS).iterdir()) == parts and rows == after and again.summary["this_run"] == {}


def test_refining_a_staged_product_keeps_its_pixels_exact(tmp_path):
    import c2pa

    folder = tmp_path / "staged"
    folder.mkdir()
    save_cutout(folder / "cut.png")
    job = write_job(folder, {"id": ["s"], "prompt": ["a mug on a table"], "product_image": ["cut.png"]},
                    styles=None, num_candidates=1, keep=1)
    first = run_job(load_job(job), backend="in-process")
    (parent,) = [r for r in results(first.output_dir).values()]
    assert parent["mode"] == "inpaint" and parent["status"] == "written"
    _, after = apply(job, [{"item_id": parent["item_id"], "decision": "refine", "prompt": "a mug on marble",
                            "strength": 0.6}])
    (child,) = [r for r in after.values() if r["parent"] == parent["item_id"]]
    assert child["status"] == "written" and child["mode"] == "inpaint"
    out = first.output_dir
    product, keep = prepare_inputs(str(folder / "cut.png"), "alpha", 64, 64)
    solid = np.asarray(keep) == 255
    image = np.asarray(Image.open(out / child["path"]).convert("RGB"))
    assert solid.any() and (image[solid] == np.asarray(product.convert("RGB"))[solid]).all()
    earlier = np.asarray(Image.open(out / parent["path"]).convert("RGB"))
    assert (image[~solid] != earlier[~solid]).any()  # the background was refined
    manifest = c2pa.Reader("image/png", io.BytesIO((out / child["path"]).read_bytes())).get_active_manifest()
    assert [i["relationship"] for i in manifest["ingredients"]] == ["parentOf"]
    assert verify_output(out) == ([], 2)


def test_bad_decisions_are_named_by_row_column_and_value_and_nothing_is_recorded(job):
    out = job.parent / "out"
    rows = results(out)
    kept, runner = pick(rows, "a"), [r for (i, _), r in rows.items() if i == "a" and r["status"] != "written"][0]
    bad = [{"item_id": "0" * 32, "decision": "reject"},
           {"item_id": kept["item_id"], "decision": "maybe"},
           {"item_id": kept["item_id"], "decision": "refine", "strength": 1.5},
           {"item_id": runner["item_id"], "decision": "refine"},
           {"item_id": "", "decision": "approve"}]
    with pytest.raises(ManifestError) as e:
        apply(job, bad)
    text = str(e.value)
    assert f"row 0 (id '{'0' * 32}'), column 'item_id': no such candidate" in text
    assert "row 1" in text and "column 'decision': 'maybe' is not a decision" in text
    assert "row 2" in text and "column 'strength': strength '1.5' is not a number in (0, 1]" in text
    assert "row 3" in text and "no image to refine" in text
    assert "row 4, column 'item_id': empty item_id" in text
    assert not (out / DECISIONS).exists() and results(out) == rows
    # [generate].refine_strength stands in for a strength not given: it must give a step too.
    with pytest.raises(ManifestError, match=r"row 0 .*column 'strength': strength 0.25 \(\[generate\]"
                                            r".refine_strength\) × steps 2 gives no denoising step"):
        apply(job, [{"item_id": kept["item_id"], "decision": "refine"}], generate={"refine_strength": 0.25})
    with pytest.raises(ManifestError, match="missing column"):
        apply(job, [{"id": "a", "decision": "approve"}])
    (job.parent / "d.txt").write_text("x")
    with pytest.raises(ManifestError, match=r"must be \.csv, \.json or \.parquet"):
        run_job(load_job(job), backend="in-process", decisions=str(job.parent / "d.txt"))


# (strength as the file gives it, what it reads as: None for none, "bad" for refused)
STRENGTHS = [(float("nan"), "bad"), (float("inf"), "bad"), (float("-inf"), "bad"), (-0.5, "bad"), (0.0, "bad"),
             (1.5, "bad"), (0.5, 0.5), (1, 1.0), (None, None),
             ("abc", "bad"), ("nan", "bad"), ("-1", "bad"), ("0.25", 0.25), (" 1 ", 1.0), ("", None)]


def _write_decisions(path: Path, strengths: list) -> Path:
    """A refine per strength in a CSV, JSON or Parquet file, each value as the format carries it
    (Parquet: a float column when all are numbers, else a text column)."""
    import pyarrow as pa

    ids = [f"{i:032x}" for i in range(len(strengths))]
    if path.suffix == ".json":  # NaN and Infinity as Python's json writes them
        path.write_text(json.dumps([{"item_id": i, "decision": "refine", "strength": s}
                                    for i, s in zip(ids, strengths, strict=True)]))
    elif path.suffix == ".csv":
        path.write_text("item_id,decision,strength\n" + "".join(
            f"{i},refine,{'' if s is None else s}\n" for i, s in zip(ids, strengths, strict=True)))
    else:
        numbers = all(s is None or isinstance(s, int | float) for s in strengths)
        column = pa.array(strengths, pa.float64() if numbers else pa.string())
        pq.write_table(pa.table({"item_id": ids, "decision": ["refine"] * len(ids), "strength": column}), path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".json", ".parquet"])
def test_a_strength_outside_the_one_rule_is_refused_whichever_the_format(tmp_path, ext):
    """NaN, infinities, 0, negatives, past 1, text: refused by LIMITS["strength"] in CSV, JSON and
    Parquet alike, each named by row and column (NaN in JSON or Parquet was taken for 'no
    strength', and the refinement made at the default); strengths within it read alike."""
    from pipeline.review.decision_file import parse, read_file

    texts = [s for s in STRENGTHS if isinstance(s[0], str)]
    numbers = [s for s in STRENGTHS if not isinstance(s[0], str)]
    files = [(numbers, "numbers"), (texts, "texts")] + ([([(True, "bad")], "bool")] if ext == ".json" else [])
    for cases, name in files:
        path = _write_decisions(tmp_path / f"{name}{ext}", [s for s, _ in cases])
        decisions, problems = parse(read_file(str(path)), str(path))
        bad = [i for i, (_, want) in enumerate(cases) if want == "bad"]
        assert [p.row for p in problems] == bad, (name, cases, problems)
        assert all(p.column == "strength" and "is not a number in (0, 1]" in p.message for p in problems)
        assert [d["strength"] for d in decisions] == [want for _, want in cases if want != "bad"]


def test_a_nan_strength_is_refused_and_nothing_recorded_or_generated(job, model_calls):
    out = job.parent / "out"
    rows = results(out)
    kept = pick(rows, "a")
    for name in ("d.json", "d.parquet"):
        path = job.parent / name
        records = [{"item_id": kept["item_id"], "decision": "refine", "strength": float("nan")}]
        if name.endswith(".json"):
            path.write_text(json.dumps(records))
        else:
            import pyarrow as pa

            pq.write_table(pa.Table.from_pylist(records), path)
        with pytest.raises(ManifestError, match=r"row 0 .*column 'strength': strength 'nan' is not a number"):
            run_job(load_job(job), backend="in-process", decisions=str(path))
    assert not (out / DECISIONS).exists() and results(out) == rows
    assert model_calls == {"generated": 0, "measured": 0}


def test_a_json_decisions_file_nested_too_deep_is_named(tmp_path):
    from pipeline.review.decision_file import read_file

    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ManifestError, match="cannot read decisions: nested too deep"):
        read_file(str(deep))


def test_decisions_on_object_storage(tmp_path, s3):
    """The output and the decisions file on S3: reject and refine (a staged product) read and
    write through the bucket only."""
    import c2pa

    from pipeline.storage.store import Output

    save_cutout(tmp_path / "cut.png")
    rows = {"id": ["a", "s"], "prompt": ["a red mug", "a mug on a table"], "product_image": [None, "cut.png"]}
    uri = f"s3://{s3.bucket}/runs/review"
    cfg = load_job(write_job(tmp_path, rows, styles=None, num_candidates=2, keep=1)).replace("job", output=uri)
    assert run_job(cfg, backend="in-process").exit_code == EXIT_OK
    out = Output(uri)

    def table():
        return {(r["id"], r["candidate"]): r for r in tables.read(out.get(RESULTS)).to_pylist()}

    before = table()
    rejected, chosen = pick(before, "a"), pick(before, "s")
    s3.fs().pipe(f"{s3.bucket}/review/decisions.json", json.dumps([
        {"item_id": rejected["item_id"], "decision": "reject", "note": "", "prompt": "", "strength": None},
        {"item_id": chosen["item_id"], "decision": "refine", "note": "", "prompt": "on marble", "strength": 0.5},
    ]).encode())
    report = run_job(cfg, backend="in-process", decisions=f"s3://{s3.bucket}/review/decisions.json")
    assert report.exit_code == EXIT_OK
    after = table()
    assert after["a", rejected["candidate"]]["reason"] == "reviewer_rejected" and not out.exists(rejected["path"])
    assert pick(after, "a")["item_id"] != rejected["item_id"]
    (child,) = [r for r in after.values() if r["parent"] == chosen["item_id"]]
    assert child["status"] == "written" and child["mode"] == "inpaint"
    manifest = c2pa.Reader("image/png", io.BytesIO(out.get(child["path"]))).get_active_manifest()
    assert [(i["relationship"], i["active_manifest"]) for i in manifest["ingredients"]] == \
        [("parentOf", chosen["c2pa_label"])]
    assert verify_output(uri) == ([], 3)
    again = run_job(cfg, backend="in-process", decisions=f"s3://{s3.bucket}/review/decisions.json")
    assert again.summary["this_run"] == {} and table() == after


def test_a_failed_refinement_is_never_made_and_a_rejected_image_never_kept_for_review(job, model_calls):
    """Re-judging a row never generates a refinement that failed its filters (here its prompt is
    blocked), and a reviewer's reject deletes the file even when rejected images are kept."""
    out = job.parent / "out"
    before = results(out)
    chosen = pick(before, "c")
    (runner_up,) = [r for (i, _), r in before.items() if i == "c" and r["status"] != "written"]
    keep_rejected = {"filter": {"blocked_terms": ["forbidden"]}, "output": {"write_rejected": True}}
    _, after = apply(job, [{"item_id": chosen["item_id"], "decision": "refine", "prompt": "a forbidden lamp"}],
                     **keep_rejected)
    model_calls.update(generated=0, measured=0)
    _, after = apply(job, [{"item_id": runner_up["item_id"], "decision": "approve"},
                           {"item_id": pick(after, "a")["item_id"], "decision": "reject"}], name="more.json",
                     **keep_rejected)
    (failed,) = [r for r in after.values() if r["parent"] == chosen["item_id"]]
    assert failed["reason"].startswith("prompt_blocked") and failed["ms_generate"] is None
    # generated: c's approved runner-up and a's runner-up, each from its seed; not the refinement
    assert model_calls == {"generated": 2, "measured": 0}
    rejected = pick(before, "a")
    gone = after["a", rejected["candidate"]]
    assert gone["reason"] == "reviewer_rejected" and gone["path"] is None and not (out / rejected["path"]).exists()
    assert verify_output(out)[0] == []


def test_a_decisions_file_that_is_a_device_or_pipe_is_named_not_read(tmp_path):
    import os

    from pipeline.review.decision_file import read_file

    os.mkfifo(tmp_path / "d.csv")
    for uri, needle in (("/dev/zero", "/dev/zero is a character device, not a regular file"),
                        (str(tmp_path / "d.csv"), "is a named pipe, not a regular file"),
                        (str(tmp_path / "none.csv"), "decisions file not found")):
        with pytest.raises(ManifestError, match=needle):
            read_file(uri)
