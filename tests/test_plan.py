"""The plan: seed rules, item ids (the idempotency key), paths, passthrough."""

import numpy as np
import pyarrow as pa
from PIL import Image

from pipeline.plan.build import build_plan
from pipeline.plan.identity import derive_seed
from pipeline.spec.manifest import load_inputs
from tests.helpers import job


def plan_of(tmp_path, rows, **kw):
    cfg = job(tmp_path, rows, **kw)
    return build_plan(load_inputs(cfg), cfg).to_pylist()


def test_seed_rules(tmp_path):
    rows = {"id": ["with-seed", "styled", "plain"], "prompt": ["a", "b", "c"],
            "style": ["studio", "brand", None], "seed": pa.array([5, None, None], pa.int64())}
    plan = plan_of(tmp_path, rows, num_candidates=3, keep=1, seed=99)
    seeds = {(r["id"], r["candidate"]): (r["seed"], r["seed_source"]) for r in plan}
    assert seeds["with-seed", 0] == (5, "row")
    assert seeds["with-seed", 1][0] == derive_seed("row", 5, 1)
    assert seeds["styled", 0] == (11, "style") and seeds["styled", 1] == (22, "style")
    assert seeds["styled", 2] == (derive_seed("style", 11, 2), "style")
    assert seeds["plain", 1] == (derive_seed("job", 99, "plain", 1), "derived")
    assert all(0 <= s < 2**63 for s, _ in seeds.values())
    assert len({s for s, _ in seeds.values()}) == 9


def test_derived_seeds_are_stable_values():
    """Pinned values: a change here would silently change every derived image (and needs a
    bump of plan.ITEM_RECIPE). item-v3: the canonical encoding of pipeline/plan/identity.py."""
    assert derive_seed("job", 0, "row-1", 0) == 3992559075785808204


def test_style_seeds_shared_across_products(tmp_path):
    rows = {"id": ["p1", "p2"], "prompt": ["mug", "shoe"], "style": ["brand", "brand"]}
    plan = plan_of(tmp_path, rows, num_candidates=2, keep=1)
    assert [r["seed"] for r in plan] == [11, 22, 11, 22]


def test_templates_fallbacks_and_passthrough(tmp_path):
    rows = {"id": ["a", "b"], "prompt": ["a {weird} mug", "b"], "style": ["studio", None],
            "negative_prompt": [None, "dark"], "width": pa.array([128, None], pa.int64()),
            "sku": ["S1", "S2"], "meta": pa.array([{"k": 1}, {"k": 2}])}
    a, b = plan_of(tmp_path, rows)
    assert a["prompt"] == "a {weird} mug, studio photo" and a["source_prompt"] == "a {weird} mug"
    assert (a["negative_prompt"], b["negative_prompt"]) == ("blurry", "dark")
    assert (a["steps"], b["steps"]) == (2, 2) and (a["width"], b["width"]) == (128, 64)
    assert (a["sku"], b["meta"]) == ("S1", {"k": 2})
    assert a["mode"] == "t2i" and a["path"] == f"images/{a['item_id'][:2]}/{a['item_id']}.png"


def test_planned_paths_are_the_writers_paths(tmp_path):
    from pipeline.storage.layout import image_path

    for fmt in ("png", "jpeg", "webp"):
        plan = plan_of(tmp_path / fmt, {"id": ["a", "b"], "prompt": ["x", "y"]}, num_candidates=2, keep=1,
                       extra=f'[output]\nformat = "{fmt}"\n')
        assert [r["path"] for r in plan] == [image_path(r["item_id"], fmt) for r in plan]


def test_item_ids_stable_and_sensitive(tmp_path):
    rows = {"id": ["a", "b"], "prompt": ["x", "y"]}
    first = plan_of(tmp_path / "1", rows, num_candidates=2, keep=1)
    again = plan_of(tmp_path / "2", rows, num_candidates=2, keep=1)
    assert [r["item_id"] for r in first] == [r["item_id"] for r in again]
    assert len({r["item_id"] for r in first}) == 4
    changed = plan_of(tmp_path / "3", {"id": ["a", "b"], "prompt": ["x", "y!"]}, num_candidates=2, keep=1)
    assert [r["item_id"] for r in changed][:2] == [r["item_id"] for r in first][:2]
    assert [r["item_id"] for r in changed][2:] != [r["item_id"] for r in first][2:]
    steps = plan_of(tmp_path / "4", rows, num_candidates=2, keep=1, extra="[generate]\nsteps = 3\n")
    assert not {r["item_id"] for r in steps} & {r["item_id"] for r in first}


def test_modes_from_product_images(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(tmp_path / "cutout.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photo.jpg")
    Image.new("L", (32, 32), 255).save(tmp_path / "mask.png")
    rows = {"id": ["cut", "photo", "masked"], "prompt": ["a", "b", "c"],
            "product_image": ["cutout.png", "photo.jpg", "photo.jpg"], "mask": [None, None, "mask.png"]}
    plan = {r["id"]: r for r in plan_of(tmp_path, rows)}
    assert (plan["cut"]["mode"], plan["cut"]["mask"]) == ("inpaint", "alpha")
    assert (plan["photo"]["mode"], plan["photo"]["mask"]) == ("img2img", None)
    assert plan["masked"]["mode"] == "inpaint" and plan["masked"]["mask"] == str(tmp_path / "mask.png")
    assert plan["photo"]["init_image"] == str(tmp_path / "photo.jpg")


def test_style_lora_resolves_against_the_styles_file(tmp_path):
    from tests.helpers import make_lora

    make_lora(tmp_path / "loras")
    styles = {"style": ["brand", "soft"], "lora": ["loras/pytorch_lora_weights.safetensors"] * 2,
              "lora_scale": [None, 0.5]}
    rows = {"id": ["a", "b", "c"], "prompt": ["x", "x", "x"], "style": ["brand", "soft", None]}
    a, b, c = plan_of(tmp_path, rows, styles=styles, seed=1)
    assert a["lora"] == str(tmp_path / "loras" / "pytorch_lora_weights.safetensors")
    assert (a["lora_scale"], b["lora_scale"], c["lora"], c["lora_scale"]) == (1.0, 0.5, None, None)


def _staging_folder(folder, product_colour=(255, 0, 0, 128)):
    folder.mkdir(parents=True, exist_ok=True)
    Image.new("RGBA", (32, 32), product_colour).save(folder / "bottle.png")
    Image.new("L", (32, 32), 255).save(folder / "mask.png")
    Image.new("RGB", (32, 32), (9, 9, 9)).save(folder / "ref.png")
    return folder


STAGED = {"id": ["cut", "masked", "plain"], "prompt": ["a", "b", "c"],
          "product_image": ["bottle.png", "bottle.png", None], "mask": [None, "mask.png", None],
          "style": [None, None, "look"]}
LOOK = {"style": ["look"], "reference_image": ["ref.png"]}


def test_item_ids_hash_input_content_not_paths(tmp_path):
    first = plan_of(_staging_folder(tmp_path / "a"), STAGED, styles=LOOK)
    moved = plan_of(_staging_folder(tmp_path / "elsewhere" / "b"), STAGED, styles=LOOK)
    assert [r["item_id"] for r in moved] == [r["item_id"] for r in first]  # same data, another mount
    replaced = plan_of(_staging_folder(tmp_path / "c", product_colour=(0, 0, 255, 128)), STAGED, styles=LOOK)
    assert [r["item_id"] != s["item_id"] for r, s in zip(replaced, first, strict=True)] == [True, True, False]
    folder = _staging_folder(tmp_path / "d")
    Image.new("L", (32, 32), 0).save(folder / "mask.png")  # same path, other mask
    Image.new("RGB", (32, 32), (1, 2, 3)).save(folder / "ref.png")  # same path, other reference
    changed = plan_of(folder, STAGED, styles=LOOK)
    assert [r["item_id"] != s["item_id"] for r, s in zip(changed, first, strict=True)] == [False, True, True]


def test_item_ids_hash_lora_content_and_model_identity_not_paths(tmp_path):
    import shutil

    from pipeline.models import embedded
    from tests.helpers import make_lora

    rows = {"id": ["a"], "prompt": ["x"], "style": ["soft"]}
    styles = {"style": ["soft"], "lora": ["loras/pytorch_lora_weights.safetensors"]}
    model = embedded.ensure("tiny-sd")
    loras = [make_lora(tmp_path / f"lora{seed}", seed=seed) for seed in (0, 1)]
    ids = {}
    for name, lora in (("one", loras[0]), ("two", loras[0]), ("other-lora", loras[1]), ("other-model", loras[0])):
        folder = tmp_path / name
        (folder / "loras").mkdir(parents=True)
        shutil.copy(lora, folder / "loras" / lora.name)
        shutil.copytree(model, folder / "model")
        if name == "other-model":  # retrained: same file names and sizes, other weights
            weights = next((folder / "model" / "unet").glob("*.safetensors"))
            data = bytearray(weights.read_bytes())
            data[len(data) // 2] ^= 0xFF
            weights.write_bytes(bytes(data))
        extra = f'[models]\ndiffusion = "{folder / "model"}"\n'
        ids[name] = plan_of(folder, rows, styles=styles, extra=extra)[0]["item_id"]
    assert ids["one"] == ids["two"]
    assert ids["other-lora"] != ids["one"] and ids["other-model"] != ids["one"]


def test_inpaint_repaints_fully_unless_told_otherwise(tmp_path):
    """Staging generates the whole background (strength 1.0) by default; an explicit row or
    style strength still wins, and image-to-image keeps [generate].strength."""
    tmp_path.mkdir(exist_ok=True)
    Image.new("RGBA", (32, 32), (255, 0, 0, 128)).save(tmp_path / "cutout.png")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photo.jpg")
    styles = {"style": ["soft"], "prompt_template": ["{prompt}"], "strength": [0.6]}
    rows = {"id": ["cut", "cut-row", "cut-style", "photo"], "prompt": ["a", "b", "c", "d"],
            "product_image": ["cutout.png", "cutout.png", "cutout.png", "photo.jpg"],
            "strength": [None, 0.5, None, None], "style": [None, None, "soft", None]}
    plan = {r["id"]: r for r in plan_of(tmp_path, rows, styles=styles)}
    assert [plan[i]["mode"] for i in rows["id"]] == ["inpaint", "inpaint", "inpaint", "img2img"]
    assert [plan[i]["strength"] for i in rows["id"]] == [1.0, 0.5, 0.6, 0.75]
    tuned = plan_of(tmp_path, rows, styles=styles, extra="[generate]\nstrength = 0.5\ninpaint_strength = 0.9\n")
    assert [r["strength"] for r in tuned] == [0.9, 0.5, 0.6, 0.5]


def test_model_fingerprints_never_fail_and_never_depend_on_the_cache(tmp_path):
    from pipeline.models.embedded import ensure
    from pipeline.models.fingerprint import fingerprint

    folder = ensure("tiny-nsfw")
    assert fingerprint(f"local-dir:{folder}") == fingerprint(str(folder)) != fingerprint(str(ensure("tiny-clip")))
    for spec in ("hf-hub:org/name", "laion2b_s34b_b79k", "a/b/c", "org/model", "not a valid id!"):
        assert fingerprint(spec)  # a name, never an exception
    assert fingerprint("org/model", "abc123") == "id:org/model@abc123"  # a pinned revision is the identity
    assert fingerprint("org/model") == "id:org/model@unpinned"


def test_a_plan_made_in_chunks_equals_the_plan_made_whole(tmp_path):
    """Chunks of whole manifest rows: seeds, row numbers, item ids, modes and passthrough values
    come out as when the manifest is planned at once, whatever the chunk size."""
    from pipeline.plan.build import plan_chunks, write_plan

    rows = {**STAGED, "id": ["cut", "masked", "plain"], "sku": ["S1", "S2", "S3"],
            "meta": pa.array([{"k": 1}, None, {"k": 3}]), "seed": pa.array([None, 7, None], pa.int64())}
    cfg = job(_staging_folder(tmp_path), rows, styles=LOOK, num_candidates=3, keep=1)
    inputs = load_inputs(cfg)
    whole = build_plan(inputs, cfg)
    assert whole.num_rows == 9 and set(whole["mode"].to_pylist()) == {"inpaint", "img2img"}
    for size in (1, 2):
        chunks = list(plan_chunks(inputs, cfg, chunk_rows=size))
        assert [c.num_rows for c in chunks] == ([3, 3, 3] if size == 1 else [6, 3])
        assert pa.concat_tables(chunks).equals(whole)
        written = write_plan(inputs, cfg, tmp_path / f"plan-{size}.parquet", chunk_rows=size)
        assert written.num_rows == 9 and pa.concat_tables(list(written.chunks())).equals(whole)
        assert [len(c) for c in written.chunks(["item_id"])] == [c.num_rows for c in chunks]


def test_rows_that_cannot_denoise_are_all_named_whichever_chunk_they_are_in(tmp_path):
    import pytest

    from pipeline.errors import ManifestError
    from pipeline.plan.build import check_plan

    rows = {"id": [f"r{i}" for i in range(5)], "prompt": ["a"] * 5, "product_image": ["bottle.png"] * 5,
            "strength": [0.9, 0.1, 0.9, 0.1, 0.1]}
    cfg = job(_staging_folder(tmp_path), rows, extra="[generate]\nsteps = 4\n")
    with pytest.raises(ManifestError) as e:
        check_plan(load_inputs(cfg), cfg, chunk_rows=2)
    assert e.value.total == 3 and [p.id for p in e.value.problems] == ["r1", "r3", "r4"]
