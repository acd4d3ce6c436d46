"""[signer].tsa_url: an RFC 3161 timestamp in each signature, from a timestamp authority on
loopback (tests/tsa_server.py); and without it, no connection at all."""

from __future__ import annotations

import datetime as dt
import io
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import c2pa
import numpy as np
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID

from pipeline.errors import SignerError
from pipeline.provenance.readback import verify_bytes, verify_settings
from pipeline.provenance.signer import Signer
from pipeline.spec.config import SignerSection
from pipeline.storage.write import encode_image
from tests.test_provenance import claim
from tests.tsa_server import PEM, issue

PNG = encode_image(np.random.default_rng(3).integers(0, 256, (24, 32, 3), dtype=np.uint8), "png")[0]


def store(data: bytes, anchors: bytes) -> dict:
    """The c2pa Reader's JSON of a PNG, read with the pipeline's own settings."""
    with c2pa.Context.from_dict(verify_settings(anchors)) as context, \
            c2pa.Reader.try_create("image/png", io.BytesIO(data), None, context) as reader:
        return json.loads(reader.json())


def test_tsa_url_timestamps_each_signature_and_a_trusted_tsa_validates_it(tsa, tmp_path):
    (tmp_path / "tsa-root.pem").write_bytes(tsa.ca_pem)  # the user trusts the TSA's root CA
    section = SignerSection(tsa_url=tsa.url, trust_anchors=str(tmp_path / "tsa-root.pem"))
    signer = Signer.from_section(section, tmp_path / "out", quiet=True)
    signed = [signer.sign(PNG, "image/png", claim(item_id=f"item-{i}")) for i in range(2)]
    # One POSTed query per signature, to the URL as configured; reading back asks for none.
    assert [(path, kind) for path, kind, _ in tsa.requests] == [("/tsa", "application/timestamp-query")] * 2
    for data in signed:
        result = signer.verify(data, "image/png")  # what the pipeline records
        assert (result.state, result.errors) == ("Trusted", ()) and result.timestamp
        s = store(data, signer.trust_anchors_pem)
        assert s["manifests"][s["active_manifest"]]["signature_info"]["time"]
        codes = {c["code"] for c in s["validation_results"]["activeManifest"]["success"]}
        assert {"timeStamp.validated", "timeStamp.trusted"} <= codes
    assert len(tsa.requests) == 2
    signer.self_test("png")


def test_the_self_test_refuses_a_timestamp_authority_nobody_trusts(tsa, tmp_path):
    """c2pa calls an untrusted timestamp informational (the state stays Trusted), but the
    signature would expire with its certificate all the same: the job stops before GPU work."""
    signer = Signer.from_section(SignerSection(tsa_url=tsa.url), tmp_path / "out", quiet=True)
    result = signer.verify(signer.sign(PNG, "image/png", claim()), "image/png")
    assert (result.state, result.errors, result.timestamp) == ("Trusted", (), None)
    with pytest.raises(SignerError, match=rf"\[signer\].tsa_url = '{tsa.url}' .* not trusted.*"
                                          r"\[signer\].trust_anchors"):
        signer.self_test("png")


def test_a_trusted_timestamp_keeps_a_signature_valid_after_its_certificate_expires(tsa):
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca = issue("signing root", ca_key, "signing root", ca_key).public_bytes(PEM)
    cert = issue("short-lived signer", key, "signing root", ca_key, lifetime=dt.timedelta(seconds=2),
                 eku=ExtendedKeyUsageOID.EMAIL_PROTECTION)
    credentials = dict(cert_chain_pem=cert.public_bytes(PEM) + ca, private_key_pem=key.private_bytes(
        PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), trust_anchors_pem=ca)
    stamped = Signer(**credentials, tsa_url=tsa.url).sign(PNG, "image/png", claim())
    plain = Signer(**credentials).sign(PNG, "image/png", claim())
    time.sleep(max(0.0, (cert.not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()) + 1.5)
    assert verify_bytes(stamped, "image/png", ca + tsa.ca_pem).errors == ()
    expired = "signingCredential.expired"
    assert expired in verify_bytes(plain, "image/png", ca + tsa.ca_pem).errors
    # An untrusted TSA's time counts for nothing: the signature expires with its certificate.
    assert expired in verify_bytes(stamped, "image/png", ca).errors


SIGN_AND_VERIFY = """import sys
from pipeline.provenance.signer import Signer
from pipeline.spec.config import SignerSection
section = SignerSection(tsa_url=sys.argv[2] or None, trust_anchors=sys.argv[3] or None)
Signer.from_section(section, sys.argv[1], quiet=True).self_test("png")
"""


def internet_calls(tmp_path, tsa_url: str | None, anchors: str | None) -> tuple[list[str], str]:
    """The IPv4/IPv6 socket calls (socket, connect, sendto, sendmsg) of a process that signs and
    verifies an image, seen through strace (c2pa's network code is Rust, out of reach of a Python
    socket patch), and its error output if it failed."""
    trace = tmp_path / "strace.txt"
    command = [sys.executable, "-c", SIGN_AND_VERIFY, str(tmp_path / "out"), tsa_url or "", anchors or ""]
    run = subprocess.run(["strace", "-f", "-qq", "-e", "trace=socket,connect,sendto,sendmsg",
                          "-o", str(trace), *command], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    calls = [line for line in trace.read_text().splitlines() if "AF_INET" in line]
    return calls, run.stderr if run.returncode else ""


@pytest.mark.skipif(shutil.which("strace") is None or subprocess.run(
    ["strace", "-qq", "-o", os.devnull, "true"], capture_output=True).returncode != 0,
    reason="needs strace, allowed to trace (ptrace)")
def test_without_tsa_url_signing_and_verifying_make_no_network_call(tsa, tmp_path):
    # The same watch sees the signer reach a TSA when there is one, so it can see c2pa's calls ...
    (tmp_path / "tsa-root.pem").write_bytes(tsa.ca_pem)
    calls, failed = internet_calls(tmp_path, tsa.url, str(tmp_path / "tsa-root.pem"))
    assert not failed
    port = tsa.url.split(":")[2].split("/")[0]
    assert any(f"sin_port=htons({port})" in c and "connect(" in c for c in calls), calls
    assert len(tsa.requests) == 1
    # ... and without one, not a single IPv4 or IPv6 socket is even opened.
    assert internet_calls(tmp_path, None, None) == ([], "")
    assert len(tsa.requests) == 1
