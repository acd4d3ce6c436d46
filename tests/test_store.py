"""The output store: the same guarantees on a local folder and on an S3-compatible bucket (a
real moto server on loopback)."""

import pytest

from pipeline.store import Output


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    if request.param == "local":
        return Output(str(tmp_path / "out"))
    s3 = request.getfixturevalue("s3")
    return Output(f"s3://{s3.bucket}/runs/nightly/")


def test_put_get_list_delete(out):
    out.put("images/ab/x.png", b"one")
    out.put("images/ab/x.png", b"two")  # a whole replacement
    out.put("_shards/part-000000.parquet", b"s")
    assert out.get("images/ab/x.png") == b"two" and out.exists("images/ab/x.png")
    assert out.files() == {"images/ab/x.png", "_shards/part-000000.parquet"}
    assert out.files("images") == {"images/ab/x.png"}
    out.delete("images/ab/x.png")
    out.delete("images/ab/x.png")  # already gone: fine
    assert not out.exists("images/ab/x.png") and out.files("images") == set()
    out.delete_prefix("_shards")
    assert out.files() == set()


def test_paths_never_leave_the_output(out):
    for bad in ("../x", "/etc/passwd", "", "a/../../x"):
        with pytest.raises(ValueError):
            out.put(bad, b"x")


def test_create_is_exclusive(out):
    assert out.create("_lock.json", b"first") is True
    assert out.create("_lock.json", b"second") is False
    assert out.get("_lock.json") == b"first"


def test_replace_takes_over_only_the_version_read(s3):
    out = Output(f"s3://{s3.bucket}/o")
    out.create("_lock.json", b"stale run")
    seen = out.version("_lock.json")
    assert out.replace("_lock.json", b"run A", seen) is True
    assert out.replace("_lock.json", b"run B", seen) is False  # B read the same stale lock: too late
    assert out.get("_lock.json") == b"run A"


def test_an_s3_output_names_itself_by_uri(s3):
    out = Output(f"s3://{s3.bucket}/a/../runs/")
    assert out.where() == f"s3://{s3.bucket}/runs" and out.where("x/y.png") == f"s3://{s3.bucket}/runs/x/y.png"
