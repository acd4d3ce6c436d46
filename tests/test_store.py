"""The output store: the same guarantees on a local folder and on an S3-compatible bucket (a
real moto server on loopback)."""

import pytest

from pipeline.storage.store import Output


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
    made = out.replace("_lock.json", b"run A", seen)
    assert made and made == out.version("_lock.json")  # the version this call made
    assert out.replace("_lock.json", b"run B", seen) is None  # B read the same stale lock: too late
    assert out.get("_lock.json") == b"run A"
    assert out.get_versioned("_lock.json") == (b"run A", made)


def test_delete_if_removes_only_the_version_read(s3):
    out = Output(f"s3://{s3.bucket}/o")
    out.create("_lock.json", b"run A")
    mine = out.version("_lock.json")
    theirs = out.replace("_lock.json", b"run B", mine)  # B took over
    assert out.delete_if("_lock.json", mine) is False and out.get("_lock.json") == b"run B"
    assert out.delete_if("_lock.json", theirs) is True and not out.exists("_lock.json")
    assert out.delete_if("_lock.json", theirs) is False  # gone already
    assert out.replace("_lock.json", b"run C", theirs) is None and out.get_versioned("_lock.json") is None


def test_an_s3_output_names_itself_by_uri(s3):
    out = Output(f"s3://{s3.bucket}/a/../runs/")
    assert out.where() == f"s3://{s3.bucket}/runs" and out.where("x/y.png") == f"s3://{s3.bucket}/runs/x/y.png"
