"""The one resolver: relative values against a base, normalised, confined; never another bucket."""

import pytest

from pipeline import uris


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
