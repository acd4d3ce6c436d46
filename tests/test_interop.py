"""The pipeline's images validate in an independent C2PA implementation, not only in the library
that wrote them (c2pa-rs through c2pa-python): @trustnxt/c2pa-ts, pure TypeScript, run with Node
(tests/interop/validate.mjs; `make setup` installs it). PNG and JPEG, each plain (text-to-image),
staged (a product photo inpainted) and refined (a reviewer's refine round, whose ingredient is
the earlier signed image). The demo CA is the trust anchor; another CA is not.

Skipped where Node or tests/interop/node_modules is missing, unless
ASSET_PIPELINE_INTEROP_TESTS=required (CI), where that is a failure."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import EXIT_OK
from pipeline.provenance.demo_ca import make_demo_credentials
from pipeline.provenance.readback import verify_bytes
from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from pipeline.storage.layout import DEMO_SIGNER, RESULTS
from tests.helpers import save_cutout, write_job

INTEROP = Path(__file__).resolve().parent / "interop"
FORMATS = {"png": "image/png", "jpeg": "image/jpeg"}
KINDS = ("plain", "staged", "refined", "steered", "format", "overlaid", "clean", "watermarked")
SEED = 5721422897711132026  # a JavaScript number reads it as 5721422897711132000
OWN = ["c2pa.actions.v2", "cawg.training-mining", "com.asset-pipeline.generation", "c2pa.hash.data"]
FAST = "[generate]\nsteps = 2\nwidth = 32\nheight = 32\nbatch_size = 2\n"
ROWS = {"id": ["plain", "staged", "steered", "overlaid"],
        "prompt": ["a red mug", "a bottle on a beach", "a lamp", "a chair"],
        "product_image": [None, "cutout.png", None, None], "seed": pa.array([SEED, None, None, None], pa.int64()),
        "style": [None, None, "look", "brand"]}
# A style image (IP-Adapter) and a structure image (ControlNet): `inputTo` ingredients; and a
# channel format of the style's image, outpainted from it (its `parentOf`).
# A brand overlay: its logo a `componentOf` ingredient (a 32 px image has no room for a headline).
STYLES = {"style": ["look", "brand"], "style_image": ["look.png", None], "structure_image": ["layout.png", None],
          "formats": [["16:9"], []], "logo": [None, "look.png"]}
ADAPTERS = '[models]\nip_adapter = "embedded:tiny-ip-adapter"\ncontrolnet = "embedded:tiny-controlnet"\n'


def _unavailable(why: str):
    if os.environ.get("ASSET_PIPELINE_INTEROP_TESTS") == "required":
        pytest.fail(f"{why}; ASSET_PIPELINE_INTEROP_TESTS=required (run `make setup` with Node.js 20+)")
    pytest.skip(why)


@pytest.fixture(scope="module")
def node() -> str:
    node = shutil.which("node")
    if node is None:
        _unavailable("node is not installed: the C2PA interoperability tests need Node.js")
    for package in ("@trustnxt/c2pa-ts", "@peculiar/x509"):
        if not (INTEROP / "node_modules" / package / "package.json").is_file():
            _unavailable(f"tests/interop/node_modules lacks {package}: run `make setup`")
    return node


def validate(node: str, files: list[Path], anchors: Path) -> list[dict]:
    done = subprocess.run([node, str(INTEROP / "validate.mjs"), "--trust", str(anchors), *map(str, files)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def flip_a_pixel_byte(data: bytes, mime: str) -> bytes:
    """One bit of the image data changed, in the middle of the pixels: PNG's first IDAT chunk,
    JPEG's entropy-coded scan (a byte that neither is nor becomes a marker)."""
    out = bytearray(data)
    if mime == "image/png":
        at = out.index(b"IDAT") + 20
    else:
        start, end = out.rindex(b"\xff\xda"), out.rindex(b"\xff\xd9")
        at = (start + end) // 2
        while out[at] >= 0xFE or out[at - 1] == 0xFF:
            at += 1
    out[at] ^= 0x01
    return bytes(out)


def run(folder: Path, fmt: str) -> dict[str, dict]:
    """One job in `fmt`: a plain and a staged image, then a refine round of the plain one. The
    written rows by kind."""
    folder.mkdir()
    save_cutout(folder / "cutout.png")
    from PIL import Image

    Image.new("RGB", (40, 40), (30, 90, 200)).save(folder / "look.png")
    layout = Image.new("RGB", (40, 40), (0, 0, 0))
    layout.paste((255, 255, 255), (8, 8, 30, 30))
    layout.save(folder / "layout.png")
    job = write_job(folder, ROWS, styles=STYLES, extra=f'[output]\nformat = "{fmt}"\n{FAST}{ADAPTERS}',
                    num_candidates=1, keep=1)
    first = run_job(load_job(job), backend="in-process")
    assert first.exit_code == EXIT_OK
    rows = {r["id"]: r for r in pq.read_table(first.output_dir / RESULTS).to_pylist() if r["variant"] is None}
    decisions = folder / "decisions.json"
    decisions.write_text(json.dumps([{"item_id": rows["plain"]["item_id"], "decision": "refine",
                                      "prompt": "a red mug at dusk", "strength": 0.5}]))
    second = run_job(load_job(job), backend="in-process", decisions=str(decisions))
    assert second.exit_code == EXIT_OK
    after = pq.read_table(second.output_dir / RESULTS).to_pylist()
    (refined,) = [r for r in after if r["parent"] == rows["plain"]["item_id"]]
    (formatted,) = [r for r in after if r["parent"] == rows["steered"]["item_id"]]
    written = {"plain": rows["plain"], "staged": rows["staged"], "refined": refined, "steered": rows["steered"],
               "format": formatted, "overlaid": rows["overlaid"]}
    assert {k: (r["status"], r["mode"]) for k, r in written.items()} == {
        "plain": ("written", "t2i"), "staged": ("written", "inpaint"), "refined": ("written", "img2img"),
        "steered": ("written", "t2i"), "format": ("written", "outpaint"), "overlaid": ("written", "t2i")}
    found = {k: {**r, "file": second.output_dir / r["path"], "ca": second.output_dir / DEMO_SIGNER / "ca.pem"}
             for k, r in written.items()}
    # the image as generated, kept beside the overlaid one: an output of its own (its label as c2pa-rs reads it)
    clean = second.output_dir / rows["overlaid"]["clean_path"]
    label = verify_bytes(clean.read_bytes(), FORMATS[fmt], found["plain"]["ca"].read_bytes()).label
    found["clean"] = {**rows["overlaid"], "path": rows["overlaid"]["clean_path"], "c2pa_label": label, "file": clean,
                      "ca": found["plain"]["ca"]}
    # A watermark bound by a soft binding: a job of its own, at a size the watermark needs
    marked = write_job(folder / "watermarked", {"id": ["watermarked"], "prompt": ["a vase"]}, styles=None,
                       extra=f'[output]\nformat = "{fmt}"\n[generate]\nsteps = 2\nwidth = 256\nheight = 256\n'
                             "[watermark]\nenabled = true\n", num_candidates=1, keep=1)
    third = run_job(load_job(marked), backend="in-process")
    (row,) = pq.read_table(third.output_dir / RESULTS).to_pylist()
    assert (row["status"], row["watermark"]) == ("written", "dwtDctSvd")
    found["watermarked"] = {**row, "file": third.output_dir / row["path"],
                            "ca": third.output_dir / DEMO_SIGNER / "ca.pem"}
    return found


@pytest.fixture(scope="module")
def checked(node, tmp_path_factory):
    """Every image validated once by c2pa-ts: with its own demo CA as the trust anchor (and a copy
    with one pixel byte flipped), and with another CA. One pipeline output serves every test."""
    root = tmp_path_factory.mktemp("interop")
    written = {fmt: run(root / fmt, fmt) for fmt in FORMATS}
    results = {}
    for fmt, mime in FORMATS.items():
        images = written[fmt]
        flipped = root / f"flipped.{fmt}"
        flipped.write_bytes(flip_a_pixel_byte(images["plain"]["file"].read_bytes(), mime))
        kinds = [*KINDS, "flipped"]
        for ca in {images[k]["ca"] for k in KINDS}:  # each output trusts its own demo CA
            mine = [k for k in kinds if (images["plain"] if k == "flipped" else images[k])["ca"] == ca]
            files = [flipped if k == "flipped" else images[k]["file"] for k in mine]
            for kind, result in zip(mine, validate(node, files, ca), strict=True):
                results[fmt, kind] = result
    other = make_demo_credentials(root / "other-ca").ca_cert  # the same names, another key
    files = [written[fmt][k]["file"] for fmt in FORMATS for k in KINDS]
    for (fmt, kind), result in zip([(f, k) for f in FORMATS for k in KINDS], validate(node, files, other),
                                   strict=True):
        results[fmt, kind, "other CA"] = result
    return written, results, root


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", KINDS)
def test_every_image_validates_and_is_trusted_in_c2pa_ts(checked, fmt, kind):
    written, results, _ = checked
    result, row = results[fmt, kind], written[fmt][kind]
    assert result["format"] == FORMATS[fmt] and result["failures"] == [], result
    assert {"claimSignature.validated", "assertion.dataHash.match", "signingCredential.trusted"} <= set(
        result["successes"])
    assert result["trust"]["trusted"] and len(result["trust"]["chain"]) == 2
    assert result["manifest"] == row["c2pa_label"] and result["claim_version"] == 2  # the one c2pa-rs read


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", KINDS)
def test_the_pipelines_own_assertions_are_created_and_the_seed_is_exact(checked, fmt, kind):
    written, results, _ = checked
    result, row = results[fmt, kind], written[fmt][kind]
    overlay = ["com.asset-pipeline.overlay"] if kind == "overlaid" else []  # the exact headline, a created assertion
    binding = ["c2pa.soft-binding"] if kind == "watermarked" else []  # the watermark's algorithm and payload
    assert result["created_assertions"] == OWN[:3] + overlay + binding + OWN[3:]
    generation = result["generation"]
    assert generation["seed_str"] == str(row["seed"]) and generation["item_id"] == row["item_id"]
    assert generation["mode"] == row["mode"]
    if kind == "watermarked":
        assert result["soft_binding"] == {"alg": "com.asset-pipeline.imwatermark.dwtDctSvd.64",
                                          "value": row["item_id"][:16]}, result
        assert result["actions"][-1] == "c2pa.watermarked.bound"
    if kind == "plain":
        assert generation["seed_str"] == "5721422897711132026"
    if kind in ("plain", "clean", "watermarked"):
        assert result["gathered_assertions"] == [] and result["ingredients"] == []
    elif kind == "steered":  # what steered the model: its style's images, inputs to the generation
        assert result["ingredients"] == [{"relationship": "inputTo", "title": "look.png"},
                                         {"relationship": "inputTo", "title": "layout.png"}], result
    elif kind == "overlaid":  # the brand's logo drawn over the clean image kept beside it: a component
        assert result["ingredients"] == [{"relationship": "parentOf", "title": Path(row["clean_path"]).name},
                                         {"relationship": "componentOf", "title": "look.png"}], result
    elif kind == "format":  # outpainted from the style's image (its manifest embedded), the style image still steering
        assert result["ingredients"] == [{"relationship": "parentOf",
                                          "title": Path(written[fmt]["steered"]["path"]).name},
                                         {"relationship": "inputTo", "title": "look.png"}], result
    else:  # what the image was made from is gathered: the product photo, the earlier round's image
        assert result["gathered_assertions"] == ["c2pa.ingredient.v3"]
        title = "cutout.png" if kind == "staged" else Path(written[fmt]["plain"]["path"]).name
        assert result["ingredients"] == [{"relationship": "parentOf", "title": title}]


@pytest.mark.parametrize("fmt", list(FORMATS))
def test_a_flipped_pixel_byte_is_a_data_hash_mismatch(checked, fmt):
    written, results, root = checked
    assert results[fmt, "flipped"]["failures"] == ["assertion.dataHash.mismatch"]
    assert results[fmt, "flipped"]["trust"]["trusted"]  # the signature still holds: the pixels do not
    # c2pa-rs says the same of the same file.
    mine = verify_bytes((root / f"flipped.{fmt}").read_bytes(), FORMATS[fmt],
                        written[fmt]["plain"]["ca"].read_bytes())
    assert "assertion.dataHash.mismatch" in mine.errors


@pytest.mark.parametrize("fmt", list(FORMATS))
@pytest.mark.parametrize("kind", KINDS)
def test_another_ca_is_untrusted(checked, fmt, kind):
    _, results, _ = checked
    result = results[fmt, kind, "other CA"]
    assert result["failures"] == ["signingCredential.untrusted"]
    assert "signingCredential.trusted" not in result["successes"] and not result["trust"]["trusted"]
    assert "claimSignature.validated" in result["successes"]  # intact, signed, just not by whom we trust
