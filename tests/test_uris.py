"""The one resolver: relative values against a base, normalised, confined; never another bucket."""

import pytest

from pipeline.errors import Refused
from pipeline.storage import uris


@pytest.mark.parametrize("value, base, expected", [
    ("p.png", "/data/m", "/data/m/p.png"),
    ("./a/../p.png", "/data/m", "/data/m/p.png"),
    ("file:///data/x/../p.png", "/elsewhere", "/data/p.png"),
    ("file://localhost/data/p.png", "/elsewhere", "/data/p.png"),
    ("p.png", "s3://bucket/manifests", "s3://bucket/manifests/p.png"),
    ("../products/p.png", "s3://bucket/manifests", "s3://bucket/products/p.png"),
    ("S3://bucket/a/./b.png", "/x", "s3://bucket/a/b.png"),
])
def test_resolve(value, base, expected):
    assert uris.resolve(value, base) == expected


@pytest.mark.parametrize("value, base", [
    ("s3://bucket/../other/p.png", "/x"),  # climbs into another bucket
    ("../../other/p.png", "s3://bucket/m"),
    ("file://otherhost/data/p.png", "/x"),  # a file on another machine is not a local path
    ("s3://", "/x"),
])
def test_resolve_refuses_what_leaves_its_place(value, base):
    with pytest.raises(ValueError):
        uris.resolve(value, base)


def test_roots_and_schemes():
    schemes = ("file", "s3")
    assert uris.problem("s3://bucket/cat/p.png", ("s3://bucket/cat/",), schemes) is None
    assert "outside" in uris.problem("s3://bucket/cat-old/p.png", ("s3://bucket/cat",), schemes)
    assert "outside" in uris.problem("/data/p.png", ("s3://bucket/cat",), schemes)
    assert "scheme 'gs'" in uris.problem("gs://bucket/p.png", (), schemes)
    assert uris.problem("s3://bucket/p.png", (), ("FILE", "S3")) is None  # schemes compare lowercased
    assert "outside" in uris.problem("s3://bucket/p.png", ("s3://",), schemes)  # a broken root matches nothing


# ── reading an input: a regular file or object, within its limit, never more ────────────────


@pytest.mark.parametrize("path, kind", [("/dev/null", "a character device"), ("/dev/zero", "a character device"),
                                        ("/tmp", "a folder")])
def test_only_regular_files_are_read(path, kind):
    for read in (uris.read_bytes, uris.fingerprint, uris.load_image):
        with pytest.raises(Refused, match=f"{path} is {kind}, not a regular file"):
            read(path)


def test_a_named_pipe_is_refused_without_waiting_for_a_writer(tmp_path):
    import os

    os.mkfifo(tmp_path / "pipe")
    for read in (uris.read_bytes, uris.fingerprint):
        with pytest.raises(Refused, match="is a named pipe, not a regular file"):
            read(str(tmp_path / "pipe"))


def test_reads_stop_at_the_limit(tmp_path, monkeypatch):
    from pipeline.spec.config import LIMITS, Limit

    (tmp_path / "f").write_bytes(b"x" * 100)
    monkeypatch.setitem(LIMITS, "image_bytes", Limit(0, 100))
    assert uris.read_bytes(str(tmp_path / "f")) == b"x" * 100
    monkeypatch.setitem(LIMITS, "image_bytes", Limit(0, 99))
    with pytest.raises(Refused, match="100 bytes, larger than the limit of 99 bytes"):
        uris.read_bytes(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        uris.read_bytes(str(tmp_path / "missing"))


def test_a_parquet_footer_is_read_once(tmp_path):
    """On object storage each footer read is a request: a table with dictionary columns (the
    results' status, reason…) reads its footer once, not once per reader."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.storage import tables

    data = tables.to_bytes(pa.table({"status": ["written", "error"] * 50, "n": list(range(100))}))
    tail = []

    class Counted(io.BytesIO):
        def read(self, n=-1):
            start = self.tell()
            out = super().read(n)
            if start + len(out) >= len(data) - 8 and out:  # the footer's length and magic
                tail.append((start, len(out)))
            return out

    table = tables.read(Counted(data), dictionary=("status",))
    assert pa.types.is_dictionary(table.schema.field("status").type) and table.num_rows == 100
    assert len(tail) == 1, tail
    assert pq.read_table(io.BytesIO(data)).equals(table.cast(pq.read_table(io.BytesIO(data)).schema))
