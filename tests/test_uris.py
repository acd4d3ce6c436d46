"""The one resolver: relative values against a base, normalised, confined; never another bucket."""

from pathlib import Path

import pytest

from pipeline.errors import Refused
from pipeline.storage import paths, uris


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
    assert paths.resolve(value, base) == expected


@pytest.mark.parametrize("value, base", [
    ("s3://bucket/../other/p.png", "/x"),  # climbs into another bucket
    ("../../other/p.png", "s3://bucket/m"),
    ("file://otherhost/data/p.png", "/x"),  # a file on another machine is not a local path
    ("s3://", "/x"),
])
def test_resolve_refuses_what_leaves_its_place(value, base):
    with pytest.raises(ValueError):
        paths.resolve(value, base)


def test_roots_and_schemes():
    schemes = ("file", "s3")
    assert paths.problem("s3://bucket/cat/p.png", ("s3://bucket/cat/",), schemes) is None
    assert "outside" in paths.problem("s3://bucket/cat-old/p.png", ("s3://bucket/cat",), schemes)
    assert "outside" in paths.problem("/data/p.png", ("s3://bucket/cat",), schemes)
    assert "scheme 'gs'" in paths.problem("gs://bucket/p.png", (), schemes)
    assert paths.problem("s3://bucket/p.png", (), ("FILE", "S3")) is None  # schemes compare lowercased
    assert "outside" in paths.problem("s3://bucket/p.png", ("s3://",), schemes)  # a broken root matches nothing


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
    from pipeline.spec.limits import LIMITS, Limit

    (tmp_path / "f").write_bytes(b"x" * 100)
    monkeypatch.setitem(LIMITS, "image_bytes", Limit(0, 100))
    assert uris.read_bytes(str(tmp_path / "f")) == b"x" * 100
    monkeypatch.setitem(LIMITS, "image_bytes", Limit(0, 99))
    with pytest.raises(Refused, match="100 bytes, larger than the limit of 99 bytes"):
        uris.read_bytes(str(tmp_path / "f"))
    with pytest.raises(FileNotFoundError):
        uris.read_bytes(str(tmp_path / "missing"))



# ── one rule for every place: inputs, job keys and the output resolve and confine alike ──────


def test_job_keys_inputs_and_the_output_resolve_alike(tmp_path, monkeypatch):
    """A job key, a manifest value and the output root naming one place resolve to one name:
    symlinks followed, `file://` read as the local path, object keys normalised."""
    from pipeline.spec.load import load_job
    from pipeline.storage.store import Output

    real = tmp_path / "real"
    (real / "out").mkdir(parents=True)
    (tmp_path / "link").symlink_to(real)
    job = tmp_path / "job.toml"
    job.write_text(f'[job]\nmanifest = "{tmp_path}/link/m.parquet"\noutput = "file://{tmp_path}/link/out"\n'
                   'allowed_input_roots = ["s3://bucket/a/../in", "../elsewhere"]\n')
    monkeypatch.chdir("/")
    cfg = load_job(job)
    assert cfg.job.manifest == paths.resolve("link/m.parquet", tmp_path) == str(real / "m.parquet")
    assert cfg.job.output == Output(f"{tmp_path}/link/out").uri == str(real / "out")
    assert cfg.job.allowed_input_roots == ("s3://bucket/in", str(tmp_path.parent / "elsewhere"))


@pytest.mark.parametrize("bad", ["../x", "a/../../x", "/etc/passwd", "", ".", "a\x00b", "..\\x"])
def test_confinement_refuses_the_same_way_for_every_entry_point(tmp_path, bad):
    from pipeline.storage.store import Output

    out = Output(str(tmp_path / "out"))
    message = f"not a relative path inside the output folder: {bad!r}"
    entry_points = [lambda: paths.confine(bad), lambda: paths.confined(tmp_path / "out", bad),
                    lambda: out.put(bad, b"x"), lambda: out.get(bad), lambda: out.create(bad, b"x"),
                    lambda: out.delete(bad), lambda: out.staged(bad).__enter__()]
    if bad:  # where("") names the output itself
        entry_points.append(lambda: out.where(bad))
    for call in entry_points:
        with pytest.raises(ValueError) as e:
            call()
        assert str(e.value) == message
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").rglob("*"))


def test_a_symlink_out_of_the_output_is_refused(tmp_path):
    from pipeline.storage.store import Output

    (tmp_path / "out").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "out" / "link").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(ValueError, match="escapes the output folder"):
        Output(str(tmp_path / "out")).put("link/x.png", b"x")
    assert not list((tmp_path / "elsewhere").iterdir())


def test_model_specs_keep_their_prefix_and_resolve_the_path_after_it(tmp_path):
    (tmp_path / "models" / "sd").mkdir(parents=True)
    assert paths.resolve_model("clip-head:h.safetensors", tmp_path) == f"clip-head:{tmp_path}/h.safetensors"
    assert paths.resolve_model("local-dir:~/clip", tmp_path) == "local-dir:" + paths.resolve("~/clip", "/")
    assert paths.resolve_model("models/sd", tmp_path) == str(tmp_path / "models" / "sd")
    for name in ("embedded:tiny-sd", "org/name", "ViT-L-14", "hf-hub:org/x", "s3://b/m"):
        assert paths.resolve_model(name, tmp_path) == name
    assert paths.model_path("clip-head:~/h.safetensors") == paths.model_path("~/h.safetensors")


# ── remote inputs: checked once, read once, copied whole ─────────────────────────────────────


def test_a_failed_copy_leaves_no_partial_file(tmp_path, monkeypatch):
    """A remote input copied to the node's cache is there whole or not at all: a copy that fails
    half-way leaves nothing a later run could take for the input."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket/loras/x.safetensors", b"w" * 1000)
    monkeypatch.setenv("ASSET_PIPELINE_CACHE", str(tmp_path / "cache"))
    real_get = type(fs).get_file

    def torn(self, rpath, lpath, **kw):
        with open(lpath, "wb") as f:
            f.write(b"w" * 10)
        raise ConnectionError("connection reset mid-copy")

    monkeypatch.setattr(type(fs), "get_file", torn)
    with pytest.raises(ConnectionError):
        uris.local_copy("memory://bucket/loras/x.safetensors")
    assert [p for p in (tmp_path / "cache").rglob("*") if p.is_file()] == []
    monkeypatch.setattr(type(fs), "get_file", real_get)
    local = uris.local_copy("memory://bucket/loras/x.safetensors")
    assert Path(local).read_bytes() == b"w" * 1000
    assert [str(p) for p in (tmp_path / "cache").rglob("*") if p.is_file()] == [local]


def test_a_remote_input_is_opened_with_the_listing_already_made(monkeypatch):
    """A remote input is listed once: the check and the open share one listing."""
    import fsspec

    fs = fsspec.filesystem("memory")
    fs.pipe_file("/bucket/x.bin", b"abc")
    calls = []
    real_info = type(fs).info
    real_open = type(fs)._open

    def counted_info(self, path, **kw):
        calls.append(path)
        return real_info(self, path, **kw)

    def sized_open(self, path, mode="rb", **kw):
        assert kw.get("size") == 3  # the listing's size, handed on: the file need not ask again
        return real_open(self, path, mode, **kw)

    monkeypatch.setattr(type(fs), "info", counted_info)
    monkeypatch.setattr(type(fs), "_open", sized_open)
    assert uris.read_bytes("memory://bucket/x.bin") == b"abc"
    assert len(calls) == 1
