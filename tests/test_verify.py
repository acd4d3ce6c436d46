"""`verify`: which CAs it trusts. A trust-anchor file that was asked for, or that the run was
configured with, and is gone, is an error naming it, never a quiet verification without it."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.review.verify import verify_output
from pipeline.storage.layout import RESULTS
from tests.test_cli import cli


@pytest.fixture
def output(tmp_path):
    """An output folder with an empty results table (nothing written yet)."""
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({c: pa.array([], pa.string()) for c in
                             ("item_id", "status", "path", "sha256", "c2pa_label")}), out / RESULTS)
    return out


def run_record(out, mode="files", trust_anchors=None):
    (out / "_runs").mkdir(exist_ok=True)
    signer = {"mode": mode, "trust_anchors": str(trust_anchors) if trust_anchors else None}
    (out / "_runs" / "r1.json").write_text(json.dumps({"run_id": "r1", "config": {"signer": signer}}))


def test_verify_with_no_anchors_configured_checks_without_them(output):
    run_record(output)
    assert verify_output(output) == ([], 0)


def test_missing_trust_anchors_argument_is_an_error_naming_it(output, tmp_path):
    missing = tmp_path / "nope" / "anchors.pem"
    problems, checked = verify_output(output, str(missing))
    assert checked == 0 and len(problems) == 1
    assert str(missing) in problems[0] and "--trust-anchors" in problems[0] and "not found" in problems[0]


def test_cli_verify_with_missing_trust_anchors_exits_1(output, tmp_path):
    missing = tmp_path / "anchors.pem"
    r = cli("verify", str(output), "--trust-anchors", str(missing))
    assert r.returncode == 1 and str(missing) in r.stderr and "Traceback" not in r.stderr


def test_configured_trust_anchors_that_are_gone_are_an_error_naming_them(output, tmp_path):
    gone = tmp_path / "ca" / "anchors.pem"
    run_record(output, trust_anchors=gone)
    problems, _ = verify_output(output)
    assert len(problems) == 1 and str(gone) in problems[0] and "[signer].trust_anchors" in problems[0]


def test_a_demo_run_whose_demo_ca_is_gone_is_an_error(output):
    run_record(output, mode="demo")
    problems, _ = verify_output(output)
    assert len(problems) == 1 and "_demo_signer/ca.pem" in problems[0] and "not found" in problems[0]
