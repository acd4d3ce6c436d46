"""The catalogue of bad inputs: each names file, row, id and column; all problems at once."""

from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.errors import ManifestError
from pipeline.plan.build import build_plan, plan_chunks
from pipeline.spec.manifest import load_inputs
from tests.helpers import job, write_job

GOOD = {"id": ["a", "b"], "prompt": ["a red mug", "a blue bottle"], "style": ["studio", "brand"]}


def rows_of(manifest):
    """The validated manifest's typed rows, every chunk."""
    return pl.concat([chunk.manifest for chunk in manifest.chunks(1000)])


def problems_of(tmp_path, rows, **kw):
    cfg = job(tmp_path, rows, **kw)
    with pytest.raises(ManifestError) as e:
        load_inputs(cfg)
    return e.value


def test_good_manifest_passes_and_keeps_passthrough_columns(tmp_path):
    rows = {**GOOD, "sku": ["S1", "S2"], "campaign": ["x", "y"], "price": [1.5, 2.0]}
    inputs = load_inputs(job(tmp_path, rows))
    assert inputs.passthrough == ("sku", "campaign", "price")
    assert inputs.rows == 2 and len(rows_of(inputs)) == 2


@pytest.mark.parametrize("rows, row, column, needle", [
    ({"id": ["a", "a"], "prompt": ["x", "y"]}, 1, "id", "duplicate id"),
    ({"id": ["a", None], "prompt": ["x", "y"]}, 1, "id", "empty id"),
    ({"id": ["a", "../../etc"], "prompt": ["x", "y"]}, 1, "id", "path separators"),
    ({"id": ["a", "x/y"], "prompt": ["x", "y"]}, 1, "id", "path separators"),
    ({"id": ["a", "b"], "prompt": ["x", "   "]}, 1, "prompt", "empty prompt"),
    ({"id": ["a", "b"], "prompt": ["x", None]}, 1, "prompt", "empty prompt"),
    ({"id": ["a", "b"], "prompt": ["x", "y" * 3000]}, 1, "prompt", "longer than 2000"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "style": ["studio", "nope"]}, 1, "style", "unknown style"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "width": [64, 100]}, 1, "width", "multiple of 8"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "height": [64, 8192]}, 1, "height", "multiple of 8"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "seed": [1, -5]}, 1, "seed", "seed must be"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "num_candidates": [0, 2]}, 0, "num_candidates", "must be 1.."),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "num_candidates": [2, 2], "keep": [1, 3]}, 1, "keep",
     "keep exceeds num_candidates"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "mask": [None, "m.png"]}, 1, "mask", "needs a product_image"),
    ({"id": ["a", "b"], "prompt": ["x", "y"], "product_image": [None, "missing.png"]}, 1, "product_image",
     "file not found"),
])
def test_bad_rows_are_named(tmp_path, rows, row, column, needle):
    err = problems_of(tmp_path, rows)
    p = err.problems[0]
    assert (p.row, p.column) == (row, column)
    assert needle in p.message
    text = str(err)
    assert "manifest.parquet" in text and f"row {row}" in text and repr(column) in text
    assert f"id {rows['id'][row]!r}" in text or rows["id"][row] is None


@pytest.mark.parametrize("rows, column, needle", [
    ({"prompt": ["x"]}, "id", "required column is missing"),
    ({"id": ["a"]}, "prompt", "required column is missing"),
    ({"id": [1], "prompt": ["x"]}, "id", "wrong type"),
    ({"id": ["a"], "prompt": ["x"], "seed": ["12"]}, "seed", "wrong type"),
    ({"id": ["a"], "prompt": ["x"], "width": [64.5]}, "width", "wrong type"),
    ({"id": ["a"], "prompt": ["x"], "status": ["mine"]}, "status", "reserved"),
    ({"id": ["a"], "prompt": ["x"], "seed": pa.array([2**64 - 1], pa.uint64())}, "seed", "out of range"),
])
def test_bad_columns_are_named(tmp_path, rows, column, needle):
    p = problems_of(tmp_path, rows).problems[0]
    assert p.column == column and needle in p.message


def test_float_seed_column_with_nulls_is_accepted(tmp_path):
    """pandas writes nullable integers as float with NaN: integral floats are fine."""
    rows = {"id": ["a", "b"], "prompt": ["x", "y"], "seed": pa.array([3.0, None], pa.float64())}
    inputs = load_inputs(job(tmp_path, rows))
    assert rows_of(inputs)["seed"].to_list() == [3, None]


def test_all_problems_reported_at_once_and_capped(tmp_path):
    n = 500
    rows = {"id": [f"r{i}" for i in range(n)], "prompt": [""] * n, "width": [65] * n}
    err = problems_of(tmp_path, rows)
    assert err.total == 2 * n
    assert len(str(err).splitlines()) <= 51
    assert f"and {2 * n - 50} more" in str(err)


def test_not_parquet_and_missing_manifest(tmp_path):
    cfg = job(tmp_path, GOOD)
    (tmp_path / "manifest.parquet").write_text("id,prompt\na,b\n")
    with pytest.raises(ManifestError, match="not a readable Parquet file"):
        load_inputs(cfg)
    (tmp_path / "manifest.parquet").unlink()
    with pytest.raises(ManifestError, match="manifest not found"):
        load_inputs(cfg)


def test_empty_manifest(tmp_path):
    rows = pa.table({"id": pa.array([], pa.string()), "prompt": pa.array([], pa.string())})
    assert "no rows" in str(problems_of(tmp_path, rows))


def test_unreadable_product_image_and_mask(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "ok.png")
    rows = {"id": ["a", "b"], "prompt": ["x", "y"], "product_image": ["ok.png", "broken.png"],
            "mask": ["broken.png", None]}
    err = problems_of(tmp_path, rows)
    found = {(p.row, p.column) for p in err.problems}
    assert found == {(1, "product_image"), (0, "mask")}
    assert "not a readable image" in str(err)


def test_input_roots_confine_product_images(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "p.png")
    rows = {"id": ["a"], "prompt": ["x"], "product_image": [str(outside / "p.png")]}
    err = problems_of(tmp_path / "job", rows, allowed_input_roots=[str(tmp_path / "job")])
    assert "outside [job].allowed_input_roots" in str(err)


@pytest.mark.parametrize("styles, column, needle", [
    ({"style": ["a", "a"]}, "style", "duplicate style name"),
    ({"style": ["a"], "prompt_template": ["no placeholder"]}, "prompt_template", "{prompt}"),
    ({"style": ["a"], "steps": pa.array([0], pa.int64())}, "steps", "1..1000"),
    ({"style": ["a"], "seeds": pa.array([[1, -1]], pa.list_(pa.int64()))}, "seeds", "seeds must be"),
    ({"style": ["a"], "width": pa.array([30], pa.int64())}, "width", "multiple of 8"),
    ({"style": ["a"], "steps": ["many"]}, "steps", "wrong type"),
])
def test_bad_styles_are_named(tmp_path, styles, column, needle):
    err = problems_of(tmp_path, {"id": ["x"], "prompt": ["y"]}, styles=styles)
    assert err.problems[0].column == column and needle in err.problems[0].message
    assert "styles.parquet" in str(err)


def test_pandas_style_parquet_is_accepted(tmp_path):
    """Categorical (dictionary) strings, float seeds with nulls and the index column pandas writes."""
    rows = pa.table({
        "id": pa.array(["a", "b"]).dictionary_encode(),
        "prompt": ["x", "y"],
        "style": pa.array(["studio", None]).dictionary_encode(),
        "seed": pa.array([1.0, None]),
        "region": pa.array(["eu", "us"]).dictionary_encode(),
        "__index_level_0__": pa.array([10, 11]),
    })
    inputs = load_inputs(job(tmp_path, rows))
    assert inputs.passthrough == ("region",)
    assert rows_of(inputs)["id"].to_list() == ["a", "b"] and rows_of(inputs)["seed"].to_list() == [1, None]


def test_style_reference_images_are_checked_and_confined(tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "ref.png")
    styles = {"style": ["look", "broken"], "reference_image": [str(outside / "ref.png"), "nope.png"]}
    err = problems_of(tmp_path / "job", {"id": ["a"], "prompt": ["x"]}, styles=styles,
                      allowed_input_roots=[str(tmp_path / "job")])
    found = {(p.id, p.column, p.message.split(":")[0]) for p in err.problems}
    assert found == {("look", "reference_image", "outside [job].allowed_input_roots"),
                     ("broken", "reference_image", "file not found")}
    assert "styles.parquet" in str(err)


def test_style_loras_must_be_safetensors_files_that_exist(tmp_path):
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "old.bin").write_bytes(b"pickle")
    styles = {"style": ["a", "b", "c"], "lora": ["old.bin", "missing.safetensors", None],
              "lora_scale": [1.0, 1.0, 9.0]}
    err = problems_of(tmp_path / "job", {"id": ["x"], "prompt": ["y"]}, styles=styles)
    found = {(p.id, p.column) for p in err.problems}
    assert found == {("a", "lora"), ("c", "lora_scale")}  # the file check runs once the table is valid
    assert "pickle weights are never loaded" in str(err)
    styles["lora"][0], styles["lora_scale"][2] = None, 1.0
    err = problems_of(tmp_path / "job", {"id": ["x"], "prompt": ["y"]}, styles=styles)
    assert [(p.id, p.column) for p in err.problems] == [("b", "lora")] and "file not found" in str(err)


@pytest.mark.parametrize("uri", [
    "file://{outside}/p.png",  # a scheme does not bypass the roots
    "file://{job}/../outside/p.png",
    "../outside/p.png",
    "sub/link.png",  # a symlink inside the root to a file outside it
])
def test_input_roots_hold_after_normalisation_whatever_the_scheme(tmp_path, uri):
    outside = tmp_path / "outside"
    outside.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(outside / "p.png")
    (tmp_path / "job" / "sub").mkdir(parents=True)
    (tmp_path / "job" / "sub" / "link.png").symlink_to(outside / "p.png")
    value = uri.format(outside=outside, job=tmp_path / "job")
    rows = {"id": ["a"], "prompt": ["x"], "product_image": [value]}
    err = problems_of(tmp_path / "job", rows, allowed_input_roots=[str(tmp_path / "job")])
    assert [(p.row, p.column) for p in err.problems] == [(0, "product_image")]
    assert "outside [job].allowed_input_roots" in str(err)


def test_object_store_roots_confine_by_prefix_and_refuse_other_schemes(tmp_path, s3):
    rows = {"id": ["ok-but-missing", "escapes", "sibling", "http"], "prompt": ["x"] * 4,
            "product_image": ["s3://bucket/catalogue/p.png", "s3://bucket/catalogue/../private/p.png",
                              "s3://bucket/catalogue-old/p.png", "http://169.254.169.254/latest/meta-data"]}
    err = problems_of(tmp_path, rows, allowed_input_roots=["s3://bucket/catalogue"])
    by_id = {p.id: p.message for p in err.problems}
    assert "outside [job].allowed_input_roots" in by_id["escapes"]
    assert "outside [job].allowed_input_roots" in by_id["sibling"]
    assert "scheme 'http' is not allowed" in by_id["http"]
    assert "outside" not in by_id.get("ok-but-missing", "")
    assert "file not found" in by_id["ok-but-missing"]  # allowed, so looked up on the (loopback) store


def test_schemes_are_refused_unless_the_job_allows_them(tmp_path):
    rows = {"id": ["a"], "prompt": ["x"], "product_image": ["http://example.invalid/p.png"]}
    err = problems_of(tmp_path, rows)
    assert "scheme 'http' is not allowed" in str(err) and "allowed_input_schemes" in str(err)


@pytest.mark.parametrize("section, key, table, value, ok", [
    ("generate", "width", "manifest", 16, False),
    ("generate", "width", "manifest", 32, True),  # the smallest size: the tiny test models run at 32..64 px
    ("generate", "height", "manifest", 4096, True),
    ("generate", "height", "manifest", 4104, False),
    ("generate", "width", "manifest", 36, False),
    ("job", "num_candidates", "manifest", 64, True),
    ("job", "num_candidates", "manifest", 65, False),
    ("job", "seed", "manifest", -1, False),
    ("generate", "steps", "styles", 1000, True),
    ("generate", "steps", "styles", 1001, False),
    ("generate", "guidance_scale", "styles", 100.0, True),
    ("generate", "guidance_scale", "styles", 750.0, False),  # 7.5 mistyped
    ("generate", "strength", "styles", 0.0, False),
    ("generate", "strength", "styles", 1.0, True),
])
def test_job_spec_manifest_and_styles_share_one_table_of_limits(tmp_path, section, key, table, value, ok):
    """A value the job spec admits, the manifest and styles admit too, and the reverse."""
    rows = {"id": ["a"], "prompt": ["x"]}
    as_job = {"extra": f"[generate]\n{key} = {value}\n"} if section == "generate" else {key: value}
    verdicts = [_passes(lambda: job(tmp_path / "spec", rows, **as_job))]
    if table == "manifest":
        verdicts.append(_passes(lambda: load_inputs(job(tmp_path / "rows", {**rows, key: [value]}))))
    else:
        styles = {"style": ["s"], key: [value]}
        verdicts.append(_passes(lambda: load_inputs(job(tmp_path / "styles", rows, styles=styles))))
    assert verdicts == [ok, ok]


def _passes(load) -> bool:
    from pipeline.errors import ConfigError

    try:
        load()
    except (ConfigError, ManifestError):
        return False
    return True


@pytest.mark.parametrize("rows, column, needle", [
    ({"style": ["studio", "nope"]}, "style", "unknown style 'nope' (known: 'studio', 'brand')"),
    ({"style": ["studio", "studoi"]}, "style", "unknown style 'studoi' (did you mean 'studio'?)"),
    ({"style": ["studio", "x" * 500]}, "style", "unknown style 'xxxxxxxx"),
    ({"width": [64, 100]}, "width", "must be a multiple of 8 in 32..4096, got 100"),
    ({"height": [64, 8192]}, "height", "must be a multiple of 8 in 32..4096, got 8192"),
    ({"seed": [1, -5]}, "seed", "seed must be 0..2^63-1, got -5"),
    ({"num_candidates": [2, 0]}, "num_candidates", "must be 1..64, got 0"),
    ({"keep": [1, 0]}, "keep", "must be 1..64, got 0"),
    ({"num_candidates": [2, 2], "keep": [1, 3]}, "keep", "keep exceeds num_candidates: 3 > 2"),
    ({"strength": [0.5, 1.5]}, "strength", "must be in (0, 1], got 1.5"),
    ({"prompt": ["x", "y" * 3000]}, "prompt", "prompt of 3000 characters is longer than 2000"),
    ({"id": ["a", "x/y"]}, "id", "got 'x/y'"),
    ({"mask": [None, "m.png"]}, "mask", "a mask needs a product_image, got 'm.png'"),
])
def test_row_problems_name_the_offending_value(tmp_path, rows, column, needle):
    """Each message says what the row holds and what is allowed, shortened: never the whole prompt."""
    err = problems_of(tmp_path, {"id": ["a", "b"], "prompt": ["x", "y"], **rows})
    p = next(p for p in err.problems if p.column == column)
    assert needle in p.message and len(p.message) < 160
    assert str(p).startswith(f"{tmp_path / 'manifest.parquet'}, row 1 (id {p.id!r}), column {column!r}: ")


@pytest.mark.parametrize("styles, column, needle", [
    ({"style": ["a"], "steps": pa.array([0], pa.int64())}, "steps", "must be 1..1000, got 0"),
    ({"style": ["a"], "guidance_scale": [-1.0]}, "guidance_scale", "must be 0..100, got -1.0"),
    ({"style": ["a"], "strength": [0.0]}, "strength", "must be in (0, 1], got 0.0"),
    ({"style": ["a"], "width": pa.array([30], pa.int64())}, "width", "must be a multiple of 8 in 32..4096, got 30"),
    ({"style": ["a"], "height": pa.array([5000], pa.int64())}, "height", "got 5000"),
    ({"style": ["a"], "seeds": pa.array([[1, -1]], pa.list_(pa.int64()))}, "seeds", "got [1, -1]"),
    ({"style": ["a"], "num_candidates": pa.array([65], pa.int64())}, "num_candidates", "must be 1..64, got 65"),
    ({"style": ["a"], "keep": pa.array([0], pa.int64())}, "keep", "must be 1..64, got 0"),
    ({"style": ["a"], "lora_scale": [9.0]}, "lora_scale", "must be 0..4, got 9.0"),
    ({"style": ["a"], "prompt_template": ["no placeholder"]}, "prompt_template", "got 'no placeholder'"),
    ({"style": ["a"], "lora": ["old.bin"]}, "lora", "got 'old.bin'"),
    ({"style": ["a", "a"]}, "style", "duplicate style name 'a'"),
    ({"style": ["a"], "clip_threshold": [150.0]}, "clip_threshold", "must be 0..100, got 150.0"),
])
def test_style_problems_name_the_offending_value(tmp_path, styles, column, needle):
    err = problems_of(tmp_path, {"id": ["x"], "prompt": ["y"]}, styles=styles)
    p = next(p for p in err.problems if p.column == column)
    assert needle in p.message and len(p.message) < 160


def test_a_long_id_is_shortened_where_the_problem_names_the_row(tmp_path):
    err = problems_of(tmp_path, {"id": ["a", "x" * 5000], "prompt": ["x", "y"]})
    line = str(err)
    assert "row 1 (id 'xxxx" in line and "..." in line and len(line) < 300


def test_image_to_image_with_no_denoising_step_is_refused_naming_the_row(tmp_path):
    # diffusers runs int(steps × strength) steps: 1 × 0.75 is none, and every candidate would fail.
    tmp_path.mkdir(exist_ok=True)
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(tmp_path / "photo.jpg")
    rows = {"id": ["ok", "none"], "prompt": ["x", "y"], "product_image": ["photo.jpg", "photo.jpg"],
            "strength": [1.0, 0.75]}
    cfg = job(tmp_path, rows, extra="[generate]\nsteps = 1\n")
    from pipeline.plan.build import build_plan

    with pytest.raises(ManifestError) as e:
        build_plan(load_inputs(cfg), cfg)
    assert [(p.row, p.id, p.column) for p in e.value.problems] == [(1, "none", "strength")]
    assert "no denoising step" in str(e.value) and "0.75" in str(e.value)


# ── hostile inputs: every problem named (row, column, value), never a traceback, a hang or a
#    read without bound ─────────────────────────────────────────────────────────────────────


def validate(job_path, *extra):
    """`validate` in-process, as scheduled jobs run it: (exit code, stderr)."""
    import contextlib
    import io

    from pipeline.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(job_path), *extra])
    return code, err.getvalue()


@pytest.fixture
def no_s3_instances():
    """No S3 client made earlier (with other credentials) is reused, and none made here is kept."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.mark.parametrize("flag", ["--manifest", "--styles"])
@pytest.mark.parametrize("uri, needle", [
    ("s3://bucket/m.parquet", "NoCredentialsError"),
    ("s3://", "names none"),
    ("zzz://x", "no storage is known by the scheme 'zzz://'"),
    ("file://otherhost/x", "another host"),
])
def test_unreadable_manifest_and_styles_uris_are_named(tmp_path, monkeypatch, no_s3_instances, flag, uri, needle):
    for key in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key in ("AWS_SHARED_CREDENTIALS_FILE", "AWS_CONFIG_FILE"):
        monkeypatch.setenv(key, str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    job_path = write_job(tmp_path, GOOD)
    code, err = validate(job_path, flag, uri)
    what = "manifest" if flag == "--manifest" else "styles table"
    assert code == 1 and "Traceback" not in err
    assert f"error: {uri}: {what} cannot be read" in err and needle in err


@pytest.fixture
def fifo(tmp_path):
    import os

    path = tmp_path / "pipe.png"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize("value, needle", [
    ("/dev/null", "/dev/null is a character device, not a regular file"),
    ("/dev/zero", "/dev/zero is a character device, not a regular file"),
    ("/dev/urandom", "/dev/urandom is a character device, not a regular file"),
    ("{tmp}", "is a folder, not a regular file"),
    ("{fifo}", "is a named pipe, not a regular file"),
])
def test_product_images_masks_and_references_must_be_regular_files(tmp_path, fifo, value, needle):
    """Read whole, /dev/zero would fill memory and a named pipe would hang the read for ever."""
    value = value.format(tmp=tmp_path, fifo=fifo)
    for rows, styles, column in (({"id": ["a"], "prompt": ["x"], "product_image": [value]}, None, "product_image"),
                                 ({"id": ["a"], "prompt": ["x"], "product_image": [str(_png(tmp_path))],
                                   "mask": [value]}, None, "mask"),
                                 ({"id": ["a"], "prompt": ["x"]}, {"style": ["s"], "reference_image": [value]},
                                  "reference_image")):
        err = problems_of(tmp_path / column, rows, styles=styles)
        assert [(p.row, p.column) for p in err.problems] == [(0, column)]
        assert needle in err.problems[0].message


def test_lora_files_must_be_regular_files(tmp_path):
    """A LoRA is hashed, not read whole: a pipe would still hang the hash, a device never end it."""
    import os

    (tmp_path / "job").mkdir()
    os.mkfifo(tmp_path / "job" / "pipe.safetensors")
    (tmp_path / "job" / "dir.safetensors").mkdir()
    styles = {"style": ["a", "b"], "lora": ["pipe.safetensors", "dir.safetensors"]}
    err = problems_of(tmp_path / "job", {"id": ["x"], "prompt": ["y"]}, styles=styles)
    found = {(p.id, p.column, p.message.split(", ")[-1]) for p in err.problems}
    assert found == {("a", "lora", "not a regular file"), ("b", "lora", "not a regular file")}
    assert "pipe.safetensors is a named pipe" in str(err) and "dir.safetensors is a folder" in str(err)


def _png(folder, name="ok.png", size=(8, 8)):
    folder.mkdir(parents=True, exist_ok=True)
    noise = np.random.default_rng(0).integers(0, 256, (*size[::-1], 3), dtype=np.uint8)
    Image.fromarray(noise).save(folder / name)
    return folder / name


@pytest.mark.parametrize("flag", ["--manifest", "--styles"])
@pytest.mark.parametrize("value, needle", [
    ("/dev/null", "/dev/null is a character device, not a regular file"),
    ("/dev/zero", "/dev/zero is a character device, not a regular file"),
    ("{fifo}", "is a named pipe, not a regular file"),
])
def test_manifest_and_styles_must_be_regular_files(tmp_path, fifo, flag, value, needle):
    code, err = validate(write_job(tmp_path, GOOD), flag, value.format(fifo=fifo))
    assert code == 1 and "Traceback" not in err and needle in err and "not found" not in err


def test_inputs_over_the_size_limit_are_refused_before_they_are_read(tmp_path, monkeypatch):
    from pipeline.spec.limits import LIMITS, Limit

    big = _png(tmp_path, "big.png", (64, 64))
    monkeypatch.setitem(LIMITS, "image_bytes", Limit(0, 100))
    err = problems_of(tmp_path, {"id": ["a"], "prompt": ["x"], "product_image": [str(big)]})
    assert [(p.row, p.column) for p in err.problems] == [(0, "product_image")]
    assert "larger than the limit of 100 bytes" in str(err)
    monkeypatch.setitem(LIMITS, "table_bytes", Limit(0, 100))
    with pytest.raises(ManifestError, match="manifest cannot be read: .* larger than the limit of 100 bytes"):
        load_inputs(job(tmp_path / "t", GOOD, styles=None))


def test_manifest_read_from_a_store_closes_what_it_opens(tmp_path, monkeypatch):
    """Every handle opened on object storage is closed by the reader, not left to the collector."""
    import fsspec
    import pyarrow.parquet as pq

    from pipeline.spec.parquet import read_parquet

    fs = fsspec.filesystem("memory")
    with fs.open("/hostile/m.parquet", "wb") as f:
        pq.write_table(pa.table(GOOD), f)
    opened = []
    real_open = type(fs)._open

    class Tracked:  # not an IOBase: nothing closes it on collection
        def __init__(self, inner):
            self.inner, self.closed = inner, False
            opened.append(self)

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def close(self):
            self.closed = True
            self.inner.close()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.close()

    monkeypatch.setattr(type(fs), "_open", lambda self, *a, **kw: Tracked(real_open(self, *a, **kw)))
    assert read_parquet("memory://hostile/m.parquet", "manifest").num_rows == 2
    assert opened and all(f.closed for f in opened)


def _string_array(values: list[bytes]) -> pa.Array:
    """A string array holding `values` as they are, valid UTF-8 or not (as a broken writer leaves it)."""
    offsets = np.cumsum([0, *map(len, values)]).astype(np.int32)
    return pa.Array.from_buffers(pa.string(), len(values), [None, pa.py_buffer(offsets.tobytes()),
                                                             pa.py_buffer(b"".join(values))])


@pytest.mark.parametrize("column", ["id", "prompt", "style", "negative_prompt", "sku"])
def test_text_that_is_not_utf8_is_named_by_row_and_value(tmp_path, column):
    rows = {"id": _string_array([b"a", b"b"]), "prompt": ["x", "y"], "style": ["studio", "studio"]}
    rows[column] = _string_array([b"studio", b"st\xffudio"])
    code, err = validate(write_job(tmp_path, pa.table(rows)))
    assert code == 1 and "Traceback" not in err and "panicked" not in err
    assert f"row 1, column {column!r}" in err or f"row 1 (id 'b'), column {column!r}" in err
    assert "not valid UTF-8, got b'st\\xffudio'" in err


def test_styles_text_that_is_not_utf8_is_named(tmp_path):
    styles = {"style": ["a", "b"], "prompt_template": _string_array([b"{prompt}", b"{prompt} \xfe"])}
    err = problems_of(tmp_path, GOOD | {"style": ["a", "b"]}, styles=styles)
    assert [(p.row, p.id, p.column) for p in err.problems] == [(1, "b", "prompt_template")]


@pytest.mark.parametrize("table, needle", [
    (pa.table({"id": ["a"], "prompt": ["x"], "": [1]}), "a column has an empty name"),
    (pa.Table.from_arrays([pa.array(["a"]), pa.array(["x"]), pa.array(["y"])], names=["id", "prompt", "prompt"]),
     "duplicate column 'prompt'"),
    (pa.Table.from_arrays([pa.array(["a"]), pa.array(["x"]), pa.array([1]), pa.array([2])],
                          names=["id", "prompt", "sku", "sku"]), "duplicate column 'sku'"),
    (pa.table({"id": ["a"], "prompt": [b"x"]}), "column 'prompt': wrong type binary, expected string"),
    (pa.table({"id": ["a"], "prompt": ["x"], "seed": pa.array([1], pa.decimal256(40, 0))}),
     "column 'seed': wrong type decimal256(40, 0), expected int64"),
])
def test_columns_polars_cannot_take_are_named(tmp_path, table, needle):
    code, err = validate(write_job(tmp_path, table))
    assert code == 1 and "Traceback" not in err and "panicked" not in err and needle in err


def test_odd_passthrough_types_and_metadata_pass_through(tmp_path):
    """A decimal256 passthrough column and schema metadata that is not UTF-8 are not the
    pipeline's business: they pass, the column exact."""
    table = pa.table({"id": ["a"], "prompt": ["x"], "price": pa.array([12345], pa.decimal256(40, 2)),
                      "blob": pa.array([b"\xff"], pa.binary())})
    table = table.replace_schema_metadata({b"k\xff": b"\xff\xfe"})
    cfg = job(tmp_path, table)
    inputs = load_inputs(cfg)
    assert inputs.passthrough == ("price", "blob")
    from pipeline.plan.build import build_plan

    plan = build_plan(inputs, cfg)
    assert plan.schema.field("price").type == pa.decimal256(40, 2) and plan["blob"].to_pylist() == [b"\xff"]
    code, err = validate(tmp_path / "job.toml")
    assert code == 0, err


@pytest.mark.parametrize("values, needle", [
    ([1.0, 1.5], "wrong type: not a whole number, got 1.5"),
    ([1.0, float("nan")], "wrong type: not a whole number, got nan"),
    ([1.0, float("inf")], "wrong type: not a whole number, got inf"),
    ([1.0, 1e30], "out of range for a 64-bit integer, got 1e+30"),
    (pa.array([1, 2**64 - 1], pa.uint64()), "out of range for a 64-bit integer, got 18446744073709551615"),
])
def test_whole_number_columns_name_the_row_and_value(tmp_path, values, needle):
    err = problems_of(tmp_path, GOOD | {"seed": values})
    assert [(p.row, p.id, p.column) for p in err.problems] == [(1, "b", "seed")]
    assert needle in err.problems[0].message


def test_style_seeds_beyond_64_bits_name_the_style(tmp_path):
    styles = {"style": ["a", "b"], "seeds": pa.array([[1], [2, 2**64 - 1]], pa.list_(pa.uint64()))}
    err = problems_of(tmp_path, GOOD | {"style": ["a", "b"]}, styles=styles)
    assert [(p.row, p.id, p.column) for p in err.problems] == [(1, "b", "seeds")]
    assert "18446744073709551615" in str(err)


def test_misspelt_columns_are_warned_with_the_nearest_name(tmp_path):
    styles = {"style": ["a"], "prompt_templat": ["{prompt}, studio"], "owner": ["me"]}
    rows = {"id": ["x"], "prompt": ["y"], "style": ["a"], "negative_promt": ["blurry"], "sku": ["S1"]}
    inputs = load_inputs(job(tmp_path, rows, styles=styles))
    text = "\n".join(inputs.warnings)
    assert "column 'prompt_templat' is not read (did you mean 'prompt_template'?)" in text
    assert "column 'owner' is not read (known: 'style'" in text  # a styles table has no passthrough
    assert "column 'negative_promt' is not read (did you mean 'negative_prompt'?)" in text
    assert "sku" not in text  # a manifest's other columns pass through
    code, err = validate(tmp_path / "job.toml")
    assert code == 0 and "warning: " in err and "did you mean 'prompt_template'?" in err


def test_a_column_name_that_is_not_utf8_is_named(tmp_path):
    import io

    import pyarrow.parquet as pq

    write_job(tmp_path, GOOD)
    buffer = io.BytesIO()
    pq.write_table(pa.table({"id": ["a"], "prompt": ["x"], "zzqq": [1]}), buffer)
    (tmp_path / "manifest.parquet").write_bytes(buffer.getvalue().replace(b"zzqq", b"\xff\xfe\xff\xfe"))
    code, err = validate(tmp_path / "job.toml")
    assert code == 1 and "Traceback" not in err and "not a readable Parquet file" in err and "UnicodeDecodeError" in err


def _catalogue(tmp_path, parts: list[pa.Table]) -> Path:
    """A job whose manifest is a folder of parts, each written in row groups of two rows."""
    path = write_job(tmp_path, parts[0])
    (tmp_path / "manifest.parquet").unlink()
    (tmp_path / "manifest").mkdir()
    for k, part in enumerate(parts):
        pq.write_table(part, tmp_path / "manifest" / f"part-{k}.parquet", row_group_size=2)
    path.write_text(path.read_text().replace('manifest = "manifest.parquet"', 'manifest = "manifest"'))
    return path


def test_a_catalogue_read_a_few_rows_at_a_time_names_each_problem_by_its_row_in_the_whole(tmp_path, monkeypatch):
    """The manifest is validated and planned a chunk at a time (never whole), its ids spilled
    by hash to buckets: a duplicate id two parts apart, bad values in later chunks and a part
    without a column come out as if the catalogue were read at once: each problem at its row in
    the whole manifest (parts in name order), all counted."""
    import pipeline.spec.duplicates
    import pipeline.spec.manifest
    from pipeline.spec.load import load_job

    monkeypatch.setattr(pipeline.spec.manifest, "READ_ROWS", 3)
    monkeypatch.setattr(pipeline.spec.duplicates, "BUCKET_ROWS", 2)  # 6 buckets for 11 rows
    first = pa.table({"id": [f"a{k}" for k in range(7)], "prompt": ["p"] * 7, "sku": [f"S{k}" for k in range(7)],
                      "seed": pa.array([1, 2, 3, 4, 5, 6, 7], pa.int64())})
    second = pa.table({"id": ["b0", "b1", "a2", "b3"], "prompt": ["p", "", "p", "p"],
                       "seed": pa.array([None, -1, None, 9], pa.int64())})
    with pytest.raises(ManifestError) as e:
        load_inputs(load_job(_catalogue(tmp_path / "bad", [first, second])))
    found = sorted((p.row, p.id, p.column, p.message.split(" (")[0].split(",")[0]) for p in e.value.problems)
    assert e.value.total == 3 and found == [(8, "b1", "prompt", "empty prompt"),
                                            (8, "b1", "seed", "seed must be 0..2^63-1"),
                                            (9, "a2", "id", "duplicate id 'a2'")]

    second = second.set_column(1, "prompt", pa.array(["p"] * 4)).set_column(
        2, "seed", pa.array([None, 8, None, 9], pa.int64())).set_column(0, "id", pa.array(["b0", "b1", "b2", "b3"]))
    cfg = load_job(_catalogue(tmp_path / "good", [first, second]))
    manifest = load_inputs(cfg)
    assert manifest.rows == 11 and manifest.passthrough == ("sku",)
    chunked = build_plan(manifest, cfg)
    monkeypatch.setattr(pipeline.spec.manifest, "READ_ROWS", 100)
    whole = pa.concat_tables(list(plan_chunks(load_inputs(cfg), cfg, chunk_rows=100)))
    assert chunked.equals(whole) and chunked["row"].to_pylist() == list(range(11))
    assert chunked["sku"].to_pylist() == [f"S{k}" for k in range(7)] + [None] * 4
    assert chunked["id"].to_pylist() == [f"a{k}" for k in range(7)] + ["b0", "b1", "b2", "b3"]


def test_a_manifest_replaced_between_validation_and_planning_stops_the_plan_by_name(tmp_path):
    """The manifest is read twice (validated, then planned): a file replaced in between (its size
    or modification time) stops the plan with that said; rows that were not validated are never
    planned."""
    cfg = job(tmp_path, GOOD)
    manifest = load_inputs(cfg)
    pq.write_table(pa.table({"id": ["a", "b"], "prompt": ["x", "y"]}), tmp_path / "manifest.parquet")
    with pytest.raises(ManifestError, match="manifest.parquet changed while the run read it; run again"):
        build_plan(manifest, cfg)
