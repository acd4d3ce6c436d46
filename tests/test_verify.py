"""`verify`: which CAs it trusts (a trust-anchor file that was asked for, or that the run was
configured with, and is gone, is an error naming it, never a quiet verification without it);
parallel checks that find what a serial one finds, in the same order; a reproducible sample;
progress on stderr for large outputs."""

import json
import shutil
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.review.verify import verify_output
from pipeline.storage.layout import RESULTS
from pipeline.storage.store import Output
from tests.helpers import signed_output
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


@pytest.fixture(scope="module")
def signed(tmp_path_factory):
    """12 signed images and 2 rejected rows, built once for the module: copy before changing it."""
    return signed_output(tmp_path_factory.mktemp("signed") / "out", 12, rejected=2)


@pytest.fixture
def doctored(signed, tmp_path):
    """The signed output with a tampered image, a missing one, a recorded manifest label that is
    not the file's, an unsigned image where a signed one was, and a stray file nothing lists."""
    out = tmp_path / "out"
    shutil.copytree(signed, out)
    table = pq.read_table(out / RESULTS)
    rows = table.to_pylist()
    tampered, missing, relabelled, unsigned = (rows[i]["path"] for i in (9, 2, 5, 0))
    data = bytearray((out / tampered).read_bytes())
    data[len(data) // 2] ^= 0xFF
    (out / tampered).write_bytes(bytes(data))
    (out / missing).unlink()
    label, rows[5]["c2pa_label"] = rows[5]["c2pa_label"], "urn:c2pa:not-this-one"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), out / RESULTS)
    from PIL import Image

    Image.new("RGB", (64, 64), (1, 2, 3)).save(out / unsigned)
    (out / "images" / "zz").mkdir()
    Image.new("RGB", (8, 8)).save(out / "images" / "zz" / "stray.png")
    return out, {"tampered": tampered, "missing": missing, "relabelled": relabelled, "unsigned": unsigned,
                 "label": label}


def subject(problem: str) -> str:
    return problem.split(": ", 1)[0]


def test_parallel_verify_finds_what_serial_finds_in_the_same_order(doctored, monkeypatch):
    """Whatever finishes first, the problems come sorted by path: the earliest listed images are
    made the slowest to read, so with 4 workers they finish last."""
    out, named = doctored
    serial = verify_output(out, workers=1)
    get = Output.get
    order = [r["path"] for r in pq.read_table(out / RESULTS).to_pylist() if r["path"]]

    def slow_get(self, rel):
        if rel in order:
            time.sleep(0.01 * (len(order) - order.index(rel)))
        return get(self, rel)

    monkeypatch.setattr(Output, "get", slow_get)
    parallel = verify_output(out, workers=4)
    assert parallel == serial
    problems, checked = parallel
    assert checked == 11  # the missing one could not be read
    assert [subject(p) for p in problems] == sorted(subject(p) for p in problems)
    by_path = {}
    for p in problems:
        by_path.setdefault(subject(p), []).append(p.split(": ", 1)[1])
    assert by_path[named["tampered"]][0] == "sha256 differs from the results table"
    assert by_path[named["tampered"]][1].startswith("C2PA Invalid")
    assert by_path[named["missing"]][0].startswith("cannot read")
    assert by_path[named["relabelled"]] == [f"C2PA manifest {named['label']} is not the recorded urn:c2pa:not-this-one"]
    assert by_path[named["unsigned"]] == ["sha256 differs from the results table", "C2PA Missing"]
    assert by_path["images/zz/stray.png"] == ["file not listed in the results table nor in any committed shard"]
    assert len(by_path) == 5


def read_images(monkeypatch) -> list[str]:
    """The images verify reads from now on, in the order asked for."""
    read, get = [], Output.get

    def recording(self, rel):
        if rel.startswith("images/"):
            read.append(rel)
        return get(self, rel)

    monkeypatch.setattr(Output, "get", recording)
    return read


def test_a_sample_checks_n_images_the_same_ones_for_a_seed_and_others_for_another(signed, monkeypatch):
    read = read_images(monkeypatch)
    said = []
    assert verify_output(signed, sample=4, seed=7, say=said.append) == ([], 4)
    first = list(read)
    assert len(set(first)) == 4 and said[0] == "sampled 4 of 12 images with seed 7"
    read.clear()
    assert verify_output(signed, sample=4, seed=7, workers=3) == ([], 4)
    assert sorted(read) == sorted(first)
    read.clear()
    assert verify_output(signed, sample=4, seed=8) == ([], 4)
    assert sorted(read) != sorted(first) and len(set(read)) == 4
    read.clear()
    assert verify_output(signed, sample=50) == ([], 12)  # more than there are: every one, once
    assert sorted(read) == sorted(set(read))


def test_a_sample_still_finds_unlisted_files_and_rows_without_a_file(doctored):
    out, _ = doctored
    problems, checked = verify_output(out, sample=1, seed=0)
    assert checked <= 1 and "images/zz/stray.png: file not listed in the results table nor in any committed shard" \
        in problems


def test_progress_lines_for_a_large_output_and_none_for_a_tiny_one(signed):
    said = []
    assert verify_output(signed, say=said.append) == ([], 12)
    assert said == []  # a tiny output: quiet
    assert verify_output(signed, workers=2, say=said.append, progress_min=10, progress_every=0) == ([], 12)
    assert len(said) >= 2 and said[-1].startswith("verified 12/12 images, 0 problems, ")
    assert all(line.startswith("verified ") and line.endswith(" img/s") for line in said)


def test_cli_verify_with_one_worker_and_a_sample(doctored):
    out, _ = doctored
    r = cli("verify", str(out), "--workers", "1")
    assert r.returncode == 1 and r.stdout.strip().splitlines()[-1] == "verified 11 image(s): 7 problem(s)"
    r = cli("verify", str(out), "--sample", "3", "--seed", "5", "--workers", "2")
    assert "sampled 3 of 12 images with seed 5" in r.stderr and "images/zz/stray.png" in r.stderr
    assert "Traceback" not in r.stderr


def test_the_sample_is_the_n_smallest_keys_of_one_seeded_stream_across_chunks():
    """The reservoir keeps, over many chunks, exactly the files whose keys (one draw a file, in
    listing order) are the n smallest; rows without a file all stay."""
    import numpy as np

    from pipeline.review.verify import draw
    from pipeline.review.verify_check import Entry

    listing = [Entry(i, f"item{i}", "written", f"images/{i:05d}.png" if i % 7 else None, None, None, None)
               for i in range(10_000)]
    files = [e for e in listing if e.rel]
    drawn, seen = draw(iter(listing), 100, seed=3)
    keys = np.random.default_rng(3).random(len(files))
    expected = {files[i].rel for i in np.argsort(keys)[:100]}
    assert seen == len(files) and {e.rel for e in drawn if e.rel} == expected
    assert [e.index for e in drawn] == sorted(e.index for e in drawn)
    assert sum(1 for e in drawn if not e.rel) == len(listing) - len(files)
    assert draw(iter(listing), 100, seed=3) == (drawn, seen) and draw(iter(listing), 100, seed=4)[0] != drawn
