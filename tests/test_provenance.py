"""C2PA signing and read-back with the real c2pa library (pipeline/provenance/)."""

from __future__ import annotations

import hashlib
import io
import pickle
import stat

import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from PIL import Image

from pipeline.errors import SignerError
from pipeline.provenance.claim import Claim
from pipeline.provenance.demo_ca import make_demo_credentials
from pipeline.provenance.readback import UNTRUSTED, verify_bytes
from pipeline.provenance.signer import Signer
from pipeline.spec.config import SignerSection
from pipeline.storage.write import encode_image


@pytest.fixture(scope="module")
def creds(tmp_path_factory):
    return make_demo_credentials(tmp_path_factory.mktemp("out") / "_demo_signer")


@pytest.fixture(scope="module")
def signer(creds):
    return Signer(cert_chain_pem=creds.cert_chain.read_bytes(),
                  private_key_pem=creds.private_key.read_bytes(),
                  trust_anchors_pem=creds.ca_cert.read_bytes())


@pytest.fixture(scope="module")
def pixels():
    return np.random.default_rng(1).integers(0, 256, (32, 48, 3), dtype=np.uint8)


def claim(**changes) -> Claim:
    fields = dict(title="row-1_0.png", model="embedded:tiny-sd", model_revision="abc123",
                  seed=2**62 + 7, steps=4, guidance_scale=5.0,
                  prompt_sha256=hashlib.sha256(b"a red teapot").hexdigest(), mode="t2i",
                  item_id="item-0001", software_agent="asset-pipeline 0.1.0")
    return Claim(**{**fields, **changes})


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


def other_key_pem() -> bytes:
    return ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption())


def test_demo_credentials_are_made_once_and_reused(tmp_path):
    first = make_demo_credentials(tmp_path / "_demo_signer")
    key = first.private_key.read_bytes()
    assert stat.S_IMODE(first.private_key.stat().st_mode) == 0o600
    assert b"PRIVATE KEY" in key and first.cert_chain.read_bytes().count(b"CERTIFICATE-----") == 4
    second = make_demo_credentials(tmp_path / "_demo_signer")
    assert second == first and second.private_key.read_bytes() == key


def test_sign_verify_png_round_trips(signer, pixels):
    data, mime = encode_image(pixels, "png")
    signed = signer.sign(data, mime, claim())
    result = signer.verify(signed, mime)
    assert result.state == "Trusted" and result.errors == () and result.ok
    assert result.label and result.label.startswith("urn:c2pa:")
    gen = result.generation
    assert gen["seed"] == 2**62 + 7 and gen["model"] == "embedded:tiny-sd"
    assert gen["prompt_sha256"] == claim().prompt_sha256 and gen["item_id"] == "item-0001"
    assert gen["mode"] == "t2i" and gen["model_revision"] == "abc123"
    assert b"a red teapot" not in signed
    np.testing.assert_array_equal(decode(signed), pixels)


def test_manifest_content(signer, pixels):
    import c2pa

    signed = signer.sign(encode_image(pixels, "png")[0], "image/png", claim())
    manifest = c2pa.Reader("image/png", io.BytesIO(signed)).get_active_manifest()
    assertions = {a["label"]: a["data"] for a in manifest["assertions"]}
    (created,) = assertions["c2pa.actions.v2"]["actions"]
    assert created["action"] == "c2pa.created"
    assert created["digitalSourceType"].endswith("/trainedAlgorithmicMedia")
    assert created["softwareAgent"] == {"name": "asset-pipeline", "version": "0.1.0"}
    uses = assertions["cawg.training-mining"]["entries"]
    assert {u["use"] for u in uses.values()} == {"notAllowed"} and len(uses) == 4
    assert manifest["title"] == "row-1_0.png" and "thumbnail" not in manifest


def claim_lists(signed: bytes, mime: str) -> dict[str, list[str]]:
    """The active claim's created and gathered assertion labels, as c2pa reads them back."""
    import json

    import c2pa

    with c2pa.Reader(mime, io.BytesIO(signed)) as reader:
        store = json.loads(reader.detailed_json())
    active = store["manifests"][store["active_manifest"]]["claim"]
    return {kind: [ref["url"].rsplit("/", 1)[-1] for ref in active.get(f"{kind}_assertions", [])]
            for kind in ("created", "gathered")}


@pytest.mark.parametrize("mode", ["t2i", "inpaint"])
def test_the_pipelines_own_assertions_are_created_ingredients_gathered(signer, pixels, mode):
    parent = dict(parent=encode_image(pixels[:16, :16], "jpeg")[0], parent_mime="image/jpeg",
                  parent_title="teapot.jpg") if mode == "inpaint" else {}
    signed = signer.sign(encode_image(pixels, "png")[0], "image/png", claim(mode=mode, **parent))
    assert signer.verify(signed, "image/png").ok
    lists = claim_lists(signed, "image/png")
    assert sorted(lists["created"]) == sorted(["c2pa.actions.v2", "cawg.training-mining",
                                               "com.asset-pipeline.generation", "c2pa.hash.data"])
    assert lists["gathered"] == (["c2pa.ingredient.v3"] if mode == "inpaint" else [])


def test_the_seed_is_also_a_string_for_javascript_readers(signer, pixels):
    seed = 5721422897711132026  # a JS number reads it as 5721422897711132000
    signed = signer.sign(encode_image(pixels, "png")[0], "image/png", claim(seed=seed))
    gen = signer.verify(signed, "image/png").generation
    assert gen["seed"] == seed and gen["seed_str"] == "5721422897711132026"
    assert float(seed) != seed  # the integer alone is not enough for a double


@pytest.mark.parametrize("fmt", ["jpeg", "webp"])
def test_sign_verify_jpeg_and_webp(signer, pixels, fmt):
    data, mime = encode_image(pixels, fmt)
    signed = signer.sign(data, mime, claim(title=f"x.{fmt}"))
    result = signer.verify(signed, mime)
    assert result.ok, result
    np.testing.assert_array_equal(decode(signed), decode(data))


def test_unsupported_mime_is_a_clear_error(signer):
    with pytest.raises(SignerError, match="cannot embed a manifest in 'image/bmp'"):
        signer.sign(b"BM", "image/bmp", claim())


def test_one_flipped_byte_fails_verification(signer, pixels):
    signed = bytearray(signer.sign(encode_image(pixels, "png")[0], "image/png", claim()))
    signed[signed.index(b"IDAT") + 20] ^= 0x01
    result = signer.verify(bytes(signed), "image/png")
    assert not result.ok
    assert result.state == "Invalid" and "assertion.dataHash.mismatch" in result.errors


def test_unsigned_png_is_missing(signer, pixels):
    result = verify_bytes(encode_image(pixels, "png")[0], "image/png", None)
    assert result.state == "Missing" and not result.ok and result.label is None


def test_inpaint_with_parent_ingredient(signer, pixels):
    product, product_mime = encode_image(pixels[:16, :16], "jpeg")
    c = claim(mode="inpaint", parent=product, parent_mime=product_mime,
              parent_title="teapot.jpg")
    signed = signer.sign(encode_image(pixels, "png")[0], "image/png", c)
    result = signer.verify(signed, "image/png")
    assert result.ok, result
    assert result.generation["mode"] == "inpaint"
    import c2pa

    manifest = c2pa.Reader("image/png", io.BytesIO(signed)).get_active_manifest()
    (ingredient,) = manifest["ingredients"]
    assert ingredient["relationship"] == "parentOf" and ingredient["title"] == "teapot.jpg"
    actions = manifest["assertions"][0]["data"]["actions"]
    assert [a["action"] for a in actions] == ["c2pa.opened", "c2pa.edited"]
    assert actions[1]["digitalSourceType"].endswith("/compositeWithTrainedAlgorithmicMedia")


def test_claim_checks_parent_against_mode():
    with pytest.raises(ValueError, match="parent"):
        claim(mode="img2img")
    with pytest.raises(ValueError, match="parent"):
        claim(parent=b"x", parent_mime="image/png")
    with pytest.raises(ValueError, match="mode"):
        claim(mode="upscale")


def test_without_trust_anchors_the_signer_is_untrusted(signer, pixels):
    signed = signer.sign(encode_image(pixels, "png")[0], "image/png", claim())
    result = verify_bytes(signed, "image/png", None)
    # c2pa-rs still calls the manifest Valid (intact and signed) but lists the failure.
    assert result.state == "Valid" and result.errors == (UNTRUSTED,) and not result.ok


def test_self_test_passes(signer):
    signer.self_test("png")


@pytest.mark.parametrize("fmt", ["png", "jpeg", "webp"])
def test_self_test_signs_in_the_jobs_output_format(signer, monkeypatch, fmt):
    signed = []
    sign = Signer.sign
    monkeypatch.setattr(Signer, "sign", lambda self, data, mime, c: signed.append(mime) or sign(self, data, mime, c))
    signer.self_test(fmt)
    assert signed == [f"image/{fmt}"]


def without_webp(monkeypatch):
    import c2pa

    supported = [m for m in c2pa.Builder.get_supported_mime_types() if m != "image/webp"]
    monkeypatch.setattr(c2pa.Builder, "get_supported_mime_types", staticmethod(lambda: supported))


def test_self_test_fails_for_a_format_c2pa_cannot_sign(signer, monkeypatch):
    without_webp(monkeypatch)
    signer.self_test("png")
    with pytest.raises(SignerError, match="image/webp"):
        signer.self_test("webp")


def test_from_section_demo(tmp_path, capsys):
    signer = Signer.from_section(SignerSection(mode="demo"), tmp_path)
    signer.self_test("png")
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "THROWAWAY" in err and str(tmp_path / "_demo_signer") in err
    again = Signer.from_section(SignerSection(mode="demo"), tmp_path)
    assert again._key == signer._key  # resumed runs keep one signer


def test_from_section_files_via_env(creds, monkeypatch):
    monkeypatch.setenv("TEST_C2PA_KEY", creds.private_key.read_text())
    section = SignerSection(mode="files", cert_chain=str(creds.cert_chain),
                            private_key_env="TEST_C2PA_KEY", trust_anchors=str(creds.ca_cert))
    Signer.from_section(section, creds.ca_cert.parent).self_test("png")


def test_from_section_missing_env_var_names_it(creds, monkeypatch):
    monkeypatch.delenv("NO_SUCH_C2PA_KEY", raising=False)
    section = SignerSection(mode="files", cert_chain=str(creds.cert_chain),
                            private_key_env="NO_SUCH_C2PA_KEY")
    with pytest.raises(SignerError, match="NO_SUCH_C2PA_KEY"):
        Signer.from_section(section, creds.ca_cert.parent)


def test_unreadable_key_names_the_file_not_the_contents(creds, tmp_path):
    bad = tmp_path / "bad.key"
    bad.write_bytes(b"-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbCwganVzdCB0ZXh0IGhlcmU=\n"
                    b"-----END PRIVATE KEY-----\n")
    section = SignerSection(mode="files", cert_chain=str(creds.cert_chain), private_key=str(bad))
    with pytest.raises(SignerError, match="bad.key") as info:
        Signer.from_section(section, tmp_path)
    assert "PRIVATE KEY" not in str(info.value) and "bm90" not in str(info.value)


def test_wrong_key_fails_self_test_and_verification(creds, pixels):
    wrong = Signer(cert_chain_pem=creds.cert_chain.read_bytes(), private_key_pem=other_key_pem(),
                   trust_anchors_pem=creds.ca_cert.read_bytes())
    with pytest.raises(SignerError, match="does not match") as info:
        wrong.self_test("png")
    assert "PRIVATE KEY" not in str(info.value)
    # c2pa itself catches it too: the signature does not verify against the certificate.
    signed = wrong.sign(encode_image(pixels, "png")[0], "image/png", claim())
    assert not wrong.verify(signed, "image/png").ok


def test_untrusted_signer_fails_self_test(creds):
    untrusted = Signer(cert_chain_pem=creds.cert_chain.read_bytes(),
                       private_key_pem=creds.private_key.read_bytes())
    with pytest.raises(SignerError, match="trust_anchors"):
        untrusted.self_test("png")


def test_key_material_never_in_repr_or_errors(signer, creds):
    key = creds.private_key.read_bytes()
    body = b"".join(key.splitlines()[1:-1]).decode()
    for text in (repr(signer), str(signer)):
        assert "PRIVATE KEY" not in text and body[:20] not in text
    with pytest.raises(SignerError) as info:
        Signer(cert_chain_pem=key, private_key_pem=key)  # key where the chain belongs
    assert "PRIVATE KEY" not in str(info.value) and body[:20] not in str(info.value)


def key_material(pem: bytes) -> list[bytes]:
    """Every form of a private key that must never be in a pickle: the PEM, each base64 line of
    it, its DER and its raw private scalar."""
    key = serialization.load_pem_private_key(pem, None)
    der = key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    return [pem, b"PRIVATE KEY", der, scalar, *pem.splitlines()[1:-1]]


def signer_from(how: str, creds, output, monkeypatch) -> Signer:
    """A signer as a job spec makes it: the demo CA, key files, or environment variables."""
    if how == "demo":
        return Signer.from_section(SignerSection(mode="demo"), output, quiet=True)
    if how == "files":
        section = SignerSection(mode="files", cert_chain=str(creds.cert_chain),
                                private_key=str(creds.private_key), trust_anchors=str(creds.ca_cert))
    else:
        monkeypatch.setenv("TEST_C2PA_CHAIN", creds.cert_chain.read_text())
        monkeypatch.setenv("TEST_C2PA_KEY", creds.private_key.read_text().replace("\n", "\\n"))
        section = SignerSection(mode="files", cert_chain_env="TEST_C2PA_CHAIN",
                                private_key_env="TEST_C2PA_KEY", trust_anchors=str(creds.ca_cert))
    return Signer.from_section(section, output)


@pytest.mark.parametrize("how", ["demo", "files", "env"])
def test_a_pickled_signer_carries_no_key_material_and_signs_where_it_lands(how, creds, tmp_path,
                                                                           monkeypatch, pixels):
    import os

    signer = signer_from(how, creds, tmp_path, monkeypatch)
    signer.self_test("png")  # native handles made: they do not travel either
    dumped = pickle.dumps(signer)
    for secret in key_material(signer._key):
        assert secret not in dumped
    for variable in ("TEST_C2PA_CHAIN", "TEST_C2PA_KEY"):
        if value := os.environ.get(variable):
            assert value.encode() not in dumped and variable.encode() in dumped
    clone = pickle.loads(dumped)
    assert clone._key == signer._key and repr(clone) == repr(signer)  # read again, here
    data = encode_image(pixels, "png")[0]
    result = clone.verify(clone.sign(data, "image/png", claim()), "image/png")
    assert result.state == "Trusted" and result.ok, result


def test_an_unpickled_signer_names_the_missing_key_file(creds, tmp_path, monkeypatch):
    import shutil

    for name in ("chain.pem", "signer.key", "ca.pem"):
        shutil.copy(creds.cert_chain.parent / name, tmp_path / name)
    section = SignerSection(mode="files", cert_chain=str(tmp_path / "chain.pem"),
                            private_key=str(tmp_path / "signer.key"))
    dumped = pickle.dumps(Signer.from_section(section, tmp_path))
    (tmp_path / "signer.key").unlink()  # this "node" does not have the key file
    with pytest.raises(SignerError, match=r"private_key: cannot read .*signer\.key") as info:
        pickle.loads(dumped)
    assert "PRIVATE KEY" not in str(info.value)


def test_an_unpickled_signer_names_the_missing_variable(creds, tmp_path, monkeypatch):
    dumped = pickle.dumps(signer_from("env", creds, tmp_path, monkeypatch))
    monkeypatch.delenv("TEST_C2PA_KEY")
    with pytest.raises(SignerError, match="environment variable TEST_C2PA_KEY is not set"):
        pickle.loads(dumped)


def test_an_unpickled_demo_signer_reads_the_drivers_ca_and_never_makes_one(tmp_path):
    signer = Signer.from_section(SignerSection(mode="demo"), tmp_path, quiet=True)
    dumped = pickle.dumps(signer)
    key = tmp_path / "_demo_signer" / "signer.key"
    key.unlink()
    with pytest.raises(SignerError, match=r"demo credentials not found: .*signer\.key"):
        pickle.loads(dumped)
    assert not key.exists()  # no new throwaway CA made behind the driver's back
    # Another CA in its place: assets would not verify against the driver's anchors.
    import shutil

    shutil.rmtree(tmp_path / "_demo_signer")
    Signer.from_section(SignerSection(mode="demo"), tmp_path, quiet=True)
    with pytest.raises(SignerError, match="not the one it was made with"):
        pickle.loads(dumped)


def test_a_signer_made_from_key_bytes_refuses_to_be_pickled(signer, creds):
    with pytest.raises(SignerError, match="made from key bytes cannot be pickled") as info:
        pickle.dumps(signer)
    assert "from_section" in str(info.value)
    for secret in key_material(creds.private_key.read_bytes()):
        assert secret.decode("latin-1") not in str(info.value)


def test_a_pickled_demo_signer_on_object_storage_reads_the_ca_objects_again(s3, pixels):
    output = f"s3://{s3.bucket}/out"
    signer = Signer.from_section(SignerSection(mode="demo"), output, quiet=True)
    dumped = pickle.dumps(signer)
    for secret in key_material(signer._key):
        assert secret not in dumped
    clone = pickle.loads(dumped)
    data = encode_image(pixels, "png")[0]
    assert clone.verify(clone.sign(data, "image/png", claim()), "image/png").ok
    s3.fs().rm(f"{s3.bucket}/out/_demo_signer/signer.key")
    with pytest.raises(SignerError, match=rf"demo credentials not found: s3://{s3.bucket}/out/_demo_signer/signer\.key"):
        pickle.loads(dumped)
