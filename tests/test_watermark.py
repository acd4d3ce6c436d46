"""The invisible watermark bound to the credentials: embedded before signing, its payload the item
id's first bits, named by a `c2pa.soft-binding` assertion, read back after writing and by `verify`;
images too small for it are refused at validation, by row, column and value."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from pipeline.provenance import watermark as wm

METHOD = wm.METHODS[wm.CHOICES["watermark_method"][0]]


def _photo(w=320, h=256, seed=0):
    """A smooth colour field with grain: photo-like enough for the transform."""
    rng = np.random.default_rng(seed)
    small = (rng.random((h // 32, w // 32, 3)) * 255).astype(np.uint8)
    smooth = np.asarray(Image.fromarray(small).resize((w, h), Image.Resampling.BICUBIC), np.float32)
    return np.clip(smooth + rng.normal(0, 4, smooth.shape), 0, 255).astype(np.uint8)


def _jpeg(rgb, quality):
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, "JPEG", quality=quality)
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"))


def test_the_payload_survives_jpeg_and_a_resized_copy_is_read_at_its_original_size():
    payload = "0123456789abcdef"
    marked = wm.embed(_photo(), METHOD, payload)
    assert wm.matches(wm.decode(marked, METHOD), payload, METHOD)
    assert not wm.matches(wm.decode(_photo(), METHOD), payload, METHOD)  # an unmarked image is not it
    small = np.asarray(Image.fromarray(_jpeg(marked, 75)).resize((240, 192), Image.Resampling.LANCZOS))
    reads = dict(wm.decode_at(small, METHOD, [(320, 256), (256, 320), (512, 512)]))
    assert set(reads) == {(320, 256)}  # 240×192 is too small to read as it is; other aspects are skipped
    assert wm.matches(reads[(320, 256)], payload, METHOD)


def test_one_rule_says_when_a_read_is_the_payload():
    assert wm.bit_errors("ff00", "fe01") == 2
    limit = METHOD.max_bit_errors
    flipped = lambda n: format(int("0" * 16, 16) ^ ((1 << n) - 1), "016x")  # noqa: E731
    assert wm.matches(flipped(limit), "0" * 16, METHOD) and not wm.matches(flipped(limit + 1), "0" * 16, METHOD)


def test_images_too_small_for_the_watermark_are_refused_by_row_column_and_value(tmp_path):
    from pipeline.errors import ManifestError
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    rows = {"id": ["big", "small"], "prompt": ["a", "b"], "width": [256, 128], "height": [256, 256]}
    extra = "[watermark]\nenabled = true\n[generate]\nsteps = 2\nwidth = 256\nheight = 256\n"
    from pipeline.plan.build import check_plan

    cfg = job(tmp_path, rows, styles=None, extra=extra)
    with pytest.raises(ManifestError) as e:
        check_plan(load_inputs(cfg), cfg)
    (p,) = e.value.problems
    assert (p.row, p.id, p.column) == (1, "small", "width") and p.message.startswith("128×256 is too small")
    off = job(tmp_path / "off", rows, styles=None, extra=extra.replace("true", "false"))
    check_plan(load_inputs(off), off)  # without the watermark the small row is fine


def test_exact_format_sizes_too_small_for_the_watermark_are_named(tmp_path):
    from pipeline.errors import ConfigError, ManifestError
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    rows = {"id": ["a"], "prompt": ["a"], "style": ["banner"]}
    extra = "[watermark]\nenabled = true\n[generate]\nsteps = 2\nwidth = 256\nheight = 256\n"
    with pytest.raises(ConfigError, match=r"\[formats\].sizes: 728x90 is too small for the watermark"):
        job(tmp_path, rows, styles={"style": ["banner"]}, extra=extra + '[formats]\nsizes = ["9:16", "728x90"]\n')
    with pytest.raises(ManifestError) as e:
        load_inputs(job(tmp_path / "s", rows, styles={"style": ["banner"], "formats": [["300x250", "300x200"]]},
                        extra=extra))
    (p,) = e.value.problems
    assert (p.row, p.id, p.column) == (0, "banner", "formats") and p.message.startswith("300x200 is too small")


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job
    from tests.helpers import write_job

    folder = tmp_path_factory.mktemp("watermark")
    rows = {"id": ["mug", "lamp"], "prompt": ["a mug", "a lamp"]}
    cfg = load_job(write_job(folder, rows, styles=None, num_candidates=2, keep=1,
                             extra="[generate]\nsteps = 2\nwidth = 512\nheight = 512\nbatch_size = 4\n"
                                   "[watermark]\nenabled = true\n"))
    report = run_job(cfg, backend="in-process")
    return cfg, report, pq.read_table(report.output_dir / "results.parquet").to_pylist()


def test_each_written_image_carries_its_item_ids_payload_bound_by_a_soft_binding(marked):
    import c2pa

    _, report, rows = marked
    written = [r for r in rows if r["status"] == "written"]
    assert len(written) == 2 and all(r["watermark"] == METHOD.name for r in rows)
    for r in written:
        path = report.output_dir / r["path"]
        payload = wm.payload_for(r["item_id"], METHOD)
        assert payload == r["item_id"][:16]
        assert wm.matches(wm.decode(np.asarray(Image.open(path).convert("RGB")), METHOD), payload, METHOD)
        store = json.loads(c2pa.Reader(str(path)).json())
        active = store["manifests"][store["active_manifest"]]
        binding = next(a["data"] for a in active["assertions"] if a["label"] == "c2pa.soft-binding")
        assert binding["alg"] == METHOD.alg and binding["blocks"][0]["value"] == payload
        actions = next(a for a in active["assertions"] if a["label"].startswith("c2pa.actions"))["data"]["actions"]
        assert actions[-1]["action"] == "c2pa.watermarked.bound"
        assert store["validation_state"] in ("Trusted", "Valid")


def test_the_watermark_changes_item_ids_only_where_it_is_on(tmp_path):
    from pipeline.plan.build import build_plan
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    rows = {"id": ["a"], "prompt": ["a"]}
    extra = "[generate]\nsteps = 2\nwidth = 256\nheight = 256\n"
    ids = {}
    for name, more in (("off", ""), ("on", "[watermark]\nenabled = true\n")):
        cfg = job(tmp_path / name, rows, styles=None, extra=extra + more)
        ids[name] = build_plan(load_inputs(cfg), cfg).column("item_id").to_pylist()
    assert set(ids["off"]).isdisjoint(ids["on"])


def test_verify_reads_each_watermark_against_its_soft_binding(marked, tmp_path):
    import shutil

    from pipeline.provenance.claim import Claim, Watermarked
    from pipeline.provenance.signer import Signer
    from pipeline.review.verify import verify_output
    from pipeline.storage.write import encode_image

    cfg, report, rows = marked
    out = tmp_path / "copy"
    shutil.copytree(report.output_dir, out)
    assert verify_output(out) == ([], 2)
    r = next(r for r in rows if r["status"] == "written")
    payload = wm.payload_for(r["item_id"], METHOD)
    # the same claim, soft binding and all, signed over pixels that carry no watermark
    data, mime = encode_image(_photo(256, 256), "png")
    claim = Claim(title="x.png", model=r["model"], model_revision=None, seed=r["seed"], steps=2, guidance_scale=5.0,
                  prompt_sha256="0" * 64, mode="t2i", item_id=r["item_id"], software_agent="asset-pipeline 0.1.0",
                  watermark=Watermarked(METHOD.alg, payload))
    (out / r["path"]).write_bytes(Signer.from_section(cfg.signer, out, quiet=True).sign(data, mime, claim))
    problems, _ = verify_output(out)
    assert f"{r['path']}: sha256 differs from the results table" in problems
    assert any(p.startswith(f"{r['path']}: the watermark reads ") and p.endswith(f"its soft binding says {payload}")
               for p in problems), problems


def test_a_watermark_the_output_format_destroys_is_an_error_row_not_a_silent_asset(tmp_path):
    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job
    from tests.helpers import write_job

    cfg = load_job(write_job(tmp_path, {"id": ["mug"], "prompt": ["a mug"]}, styles=None, num_candidates=1, keep=1,
                             max_failed_fraction=1.0,
                             extra="[generate]\nsteps = 2\nwidth = 256\nheight = 256\n[watermark]\nenabled = true\n"
                                   '[output]\nformat = "jpeg"\njpeg_quality = 2\n'))
    report = run_job(cfg, backend="in-process")
    (r,) = pq.read_table(report.output_dir / "results.parquet").to_pylist()
    assert (r["status"], r["reason_code"], r["path"]) == ("error", "verify", None)
    assert r["reason"].startswith("verify: the watermark reads "), r["reason"]
    assert not list((report.output_dir / "images").rglob("*.jpg"))  # nothing unverified left


def _stripped(path, tmp_path, name="stripped.jpg"):
    """What a platform makes of an image: resized to 75%, re-encoded as JPEG 75, no metadata left."""
    image = Image.open(path).convert("RGB")
    small = image.resize((image.width * 3 // 4, image.height * 3 // 4), Image.Resampling.LANCZOS)
    out = tmp_path / name
    small.save(out, "JPEG", quality=75)
    return out


def _identify(*argv):
    from pipeline.cli import main

    return main(["identify", *map(str, argv), "--json"])


def test_identify_finds_a_stripped_resized_jpeg_copy_by_its_watermark(marked, tmp_path, capsys):
    import c2pa

    _, report, rows = marked
    for r in (r for r in rows if r["status"] == "written"):
        copy = _stripped(report.output_dir / r["path"], tmp_path, f"{r['id']}.jpg")
        with pytest.raises(c2pa.C2paError):  # no manifest left
            c2pa.Reader(str(copy))
        assert _identify(copy, "--output", report.output_dir) == 0
        found = json.loads(capsys.readouterr().out)
        assert (found["how"], found["state"], found["read_at"], found["collision"]) == (
            "watermark", "Missing", [512, 512], False)
        (m,) = found["matches"]
        assert m["record"]["item_id"] == r["item_id"] and m["record"]["id"] == r["id"]
        assert (m["record"]["seed"], m["record"]["prompt"], m["record"]["row"]) == (r["seed"], r["prompt"], r["row"])
        assert m["original_state"] == "Trusted" and m["bit_errors"] <= METHOD.max_bit_errors
        assert m["confidence"] == round(1 - m["bit_errors"] / METHOD.bits, 3)


def test_identify_reads_an_intact_manifest_and_says_not_found_for_anything_else(marked, tmp_path, capsys):
    _, report, rows = marked
    r = next(r for r in rows if r["status"] == "written")
    assert _identify(report.output_dir / r["path"], "--output", report.output_dir) == 0
    found = json.loads(capsys.readouterr().out)
    assert (found["how"], found["state"]) == ("manifest", "Trusted")
    assert [m["record"]["item_id"] for m in found["matches"]] == [r["item_id"]]
    stranger = tmp_path / "stranger.png"
    Image.fromarray(wm.embed(_photo(256, 256), METHOD, "0123456789abcdef")).save(stranger)  # someone else's mark
    assert _identify(stranger, "--output", report.output_dir) == 1
    assert json.loads(capsys.readouterr().out) | {"file": None} == {
        "file": None, "how": "not found", "state": "Missing", "read_at": None, "matches": [], "collision": False,
        "found": False}


def test_identify_names_every_output_holding_the_payload_as_a_collision(marked, tmp_path, capsys):
    import shutil

    from pipeline.cli import main

    _, report, rows = marked
    twin = tmp_path / "twin"
    shutil.copytree(report.output_dir, twin)  # the same job run into a second output: the same item ids
    r = next(r for r in rows if r["status"] == "written")
    copy = _stripped(report.output_dir / r["path"], tmp_path)
    assert _identify(copy, "--output", report.output_dir, "--output", twin) == 0
    found = json.loads(capsys.readouterr().out)
    assert found["collision"] and {m["output"] for m in found["matches"]} == {str(report.output_dir), str(twin)}
    assert main(["identify", str(copy), "--output", str(report.output_dir), "--output", str(twin)]) == 0
    text = capsys.readouterr().out
    assert "metadata stripped" in text and "payload collision: 2 images match equally" in text


def test_identify_looks_in_an_output_on_object_storage(marked, s3, tmp_path, capsys):
    _, report, rows = marked
    fs = s3.fs()
    prefix = f"{s3.bucket}/campaigns/spring"
    for path in report.output_dir.rglob("*"):  # the output as a run on the bucket leaves it
        if path.is_file():
            fs.pipe(f"{prefix}/{path.relative_to(report.output_dir).as_posix()}", path.read_bytes())
    r = next(r for r in rows if r["status"] == "written")
    copy = _stripped(report.output_dir / r["path"], tmp_path)
    assert _identify(copy, "--output", f"s3://{prefix}") == 0
    found = json.loads(capsys.readouterr().out)
    (m,) = found["matches"]
    assert (m["output"], m["record"]["item_id"], m["original_state"]) == (f"s3://{prefix}", r["item_id"], "Trusted")


def test_identify_takes_many_files_in_one_call_each_with_its_own_record(marked, tmp_path, capsys):
    _, report, rows = marked
    written = [r for r in rows if r["status"] == "written"]
    copies = [_stripped(report.output_dir / r["path"], tmp_path, f"{r['id']}.jpg") for r in written]
    intact = report.output_dir / written[0]["path"]
    assert _identify(*copies, intact, "--output", report.output_dir) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(x["how"], x["matches"][0]["record"]["item_id"]) for x in lines] == [
        *(("watermark", r["item_id"]) for r in written), ("manifest", written[0]["item_id"])]
