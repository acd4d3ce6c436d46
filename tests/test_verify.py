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


def test_run_records_are_read_one_way_the_latest_by_start_and_a_torn_one_skipped(output):
    """verify and report read `_runs/` through one reader (storage/records): the latest run
    by its start time counts, and a record that is not JSON (torn by hand) is skipped, not fatal."""
    from pipeline.storage.records import latest_run, run_records

    runs = output / "_runs"
    runs.mkdir()
    for name, day, mode in (("r2", "02", "demo"), ("r1", "01", "files")):
        record = {"run_id": name, "started_at": f"2026-01-{day}T00:00:00+00:00",
                  "config": {"signer": {"mode": mode, "trust_anchors": None}}}
        (runs / f"{name}.json").write_text(json.dumps(record))
    (runs / "r3.json").write_text('{"run_id": "r3", "started_at": "2026-01-0')  # a torn record
    (runs / "r0.json").write_text(json.dumps({"started_at": "2025-12-31T00:00:00+00:00"}))  # no run id: its name
    assert [r.run_id for r in run_records(output)] == ["r0", "r1", "r2"]
    assert latest_run(output).run_id == "r2" and latest_run(output, other_than="r2").run_id == "r1"
    problems, _ = verify_output(output)  # the latest run was a demo run: its CA is looked for
    assert len(problems) == 1 and "_demo_signer/ca.pem" in problems[0] and "not found" in problems[0]
