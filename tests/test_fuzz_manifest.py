"""Property: whatever manifest and styles table arrive, `validate` exits 0 or 1 and never lets an
exception (a traceback, a polars panic) escape; it never hangs and never reads without bound.

Tables are built from hostile parts: column names known, misspelt, empty, reserved or repeated;
every Arrow type a Parquet file can hold; nulls, NaN, infinities, numbers beyond 64 bits, text
that is not UTF-8, paths to devices, pipes, folders and other hosts; metadata that is not UTF-8;
files cut short. In-process through the CLI's own entry point (fast); one subprocess run checks
that the worst of them leave no traceback on stderr.
"""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from pipeline.spec import schema

ROOT = Path(__file__).resolve().parents[1]
PLACE = Path(tempfile.gettempdir()) / f"fuzz-inputs-{os.getpid()}"  # the files hostile values point at

# Known names mostly, so that examples get past the first checks; odd ones now and then.
MANIFEST_NAMES = [*schema.MANIFEST_COLUMNS] * 3 + ["sku", "", "status", "__x", "prompt_templat", "idd", "ünï",
                                                  "__index_level_0__"]
STYLES_NAMES = [*schema.STYLES_COLUMNS] * 3 + ["prompt_templat", "", "notes", "stlye"]
PATHS = [str(PLACE / "ok.png"), str(PLACE / "broken.png"), str(PLACE / "pipe.png"), str(PLACE), "/dev/zero",
         "/dev/null", "/dev/urandom", "ok.png", "../x.png", "zzz://x", "file://otherhost/x", "s3://",
         "s3://bucket/../other/x.png", "http://169.254.169.254/latest", "a\x00b", str(PLACE / "w.safetensors"),
         "/dev/zero.safetensors", "nope.safetensors"]
WORDS = ["a", "b", "", " ", "studio", "{prompt}", "x {prompt} y", "a/b", "..", "é" * 300, "x" * 3000, *PATHS]
INT_BOUNDS = {pa.int8(): (-128, 127), pa.int32(): (-2**31, 2**31 - 1), pa.int64(): (-2**63, 2**63 - 1),
              pa.uint8(): (0, 255), pa.uint64(): (0, 2**64 - 1)}
TYPES = [pa.string(), pa.large_string(), pa.binary(), *INT_BOUNDS, pa.float16(), pa.float32(), pa.float64(),
         pa.bool_(), pa.decimal128(10, 2), pa.decimal256(40, 2), pa.list_(pa.int64()), pa.list_(pa.uint64()),
         pa.large_list(pa.int32()), pa.list_(pa.string()), pa.struct([("a", pa.int32())]), pa.null(),
         pa.timestamp("ms"), pa.date32(), pa.dictionary(pa.int32(), pa.string()), "bad-utf8"]


def _bad_utf8(values: list[bytes | None]) -> pa.Array:
    """A string array holding bytes as they are: what a broken writer leaves in a Parquet file."""
    data = [v or b"" for v in values]
    offsets = np.cumsum([0, *map(len, data)]).astype(np.int32)
    validity = pa.array([v is not None for v in values]).buffers()[1] if None in values else None
    return pa.Array.from_buffers(pa.string(), len(values), [validity, pa.py_buffer(offsets.tobytes()),
                                                             pa.py_buffer(b"".join(data))])


def _half(values: list[float]) -> pa.Array:
    with np.errstate(over="ignore"):  # 1e30 is infinity in 16 bits, as a writer would make it
        return pa.array(np.array(values, np.float16))


def _values(t, n: int):
    """A strategy for a column of type `t`, `n` rows, nulls included."""
    def nullable(s):
        return st.lists(st.one_of(st.none(), s, s), min_size=n, max_size=n)

    words = st.one_of(st.sampled_from(WORDS), st.text(max_size=12))
    if t == "bad-utf8":
        return nullable(st.one_of(st.binary(max_size=6), st.just(b"st\xffudio"))).map(_bad_utf8)
    if t in (pa.string(), pa.large_string()):
        return nullable(words).map(lambda v: pa.array(v, t))
    if t == pa.binary():
        return nullable(st.binary(max_size=8)).map(lambda v: pa.array(v, t))
    if t in INT_BOUNDS:
        lo, hi = INT_BOUNDS[t]
        edge = st.sampled_from([v for v in (0, 1, -1, 7, 8, 32, 64, 65, 1000, 4096, 2**63 - 1, 2**64 - 1)
                                if lo <= v <= hi])
        return nullable(st.one_of(edge, st.integers(lo, hi))).map(lambda v: pa.array(v, t))
    if t in (pa.float16(), pa.float32(), pa.float64()):
        edge = st.sampled_from([0.0, 0.5, 1.0, 1.5, 7.5, 64.0, float("nan"), float("inf"), -float("inf"), 1e30])
        floats = st.one_of(edge, st.floats(width=16 if t == pa.float16() else 32 if t == pa.float32() else 64))
        if t == pa.float16():
            return st.lists(floats, min_size=n, max_size=n).map(_half)
        return nullable(floats).map(lambda v: pa.array(v, t))
    if t == pa.bool_():
        return nullable(st.booleans()).map(lambda v: pa.array(v, t))
    if pa.types.is_decimal(t):
        return nullable(st.integers(-10**8, 10**8)).map(
            lambda v: pa.array([None if x is None else __import__("decimal").Decimal(x) / 100 for x in v], t))
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        inner = t.value_type
        if inner == pa.string():
            item = words
        else:
            lo, hi = INT_BOUNDS.get(inner, (-2**31, 2**31 - 1))
            item = st.one_of(st.none(), st.integers(lo, hi), st.sampled_from([v for v in (0, -1, 2**63 - 1, 2**64 - 1)
                                                                             if lo <= v <= hi]))
        return nullable(st.lists(item, max_size=3)).map(lambda v: pa.array(v, t))
    if pa.types.is_struct(t):
        return nullable(st.fixed_dictionaries({"a": st.integers(-5, 5)})).map(lambda v: pa.array(v, t))
    if t == pa.null():
        return st.just(pa.nulls(n))
    if t == pa.timestamp("ms"):
        return nullable(st.integers(0, 2**40)).map(lambda v: pa.array(v, pa.int64()).cast(t))
    if t == pa.date32():
        return nullable(st.integers(0, 30000)).map(lambda v: pa.array(v, pa.int32()).cast(t))
    if pa.types.is_dictionary(t):
        return nullable(words).map(lambda v: pa.array(v, pa.string()).dictionary_encode())
    raise AssertionError(t)


@st.composite
def tables(draw, names: list[str], base: dict[str, list[str]], most_rows: int = 4):
    """A table: often the well-formed `base` columns, then hostile columns (any name, type, values)."""
    n = draw(st.integers(0, most_rows))
    columns: list[tuple[str, pa.Array]] = []
    if draw(st.integers(0, 5)):
        columns += [(name, pa.array([make(i) for i in range(n)], pa.string())) for name, make in base.items()]
    for _ in range(draw(st.integers(0, 4))):
        name = draw(st.sampled_from(names))
        columns = [c for c in columns if c[0] != name] if draw(st.integers(0, 9)) else columns  # now and then twice
        columns.append((name, draw(_values(draw(st.sampled_from(TYPES)), n))))
    table = pa.Table.from_arrays([a for _, a in columns], names=[c for c, _ in columns]) if columns else \
        pa.table({"unrelated": pa.array([], pa.int64())})
    if draw(st.integers(0, 9)) == 0:
        table = table.replace_schema_metadata({b"k\xff": b"\xfe\xff", b"pandas": b"{not json"})
    return table


def _write(path: Path, table: pa.Table, cut: int | None) -> None:
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    data = buffer.getvalue()
    path.write_bytes(data if cut is None else data[:cut])


@pytest.fixture(autouse=True, scope="module")
def _place():
    """A good image, a broken one, a weights file and a named pipe, removed afterwards."""
    import shutil

    PLACE.mkdir(exist_ok=True)
    Image.new("RGB", (8, 8), (9, 9, 9)).save(PLACE / "ok.png")
    (PLACE / "broken.png").write_bytes(b"\x89PNG not really")
    (PLACE / "w.safetensors").write_bytes(b"{}")
    os.mkfifo(PLACE / "pipe.png")
    yield
    shutil.rmtree(PLACE, ignore_errors=True)


MANIFEST_BASE = {"id": lambda i: f"r{i}", "prompt": lambda i: f"a product {i}"}
STYLES_BASE = {"style": lambda i: ["studio", "brand", "x"][i % 3]}


def _validate(folder: Path, manifest: pa.Table, styles: pa.Table | None, cuts: tuple[int | None, int | None],
              extra: str = "") -> tuple[int, str]:
    _write(folder / "manifest.parquet", manifest, cuts[0])
    lines = ["[job]", 'name = "fuzz"', 'manifest = "manifest.parquet"', f'output = "{folder / "out"}"',
             'allowed_input_schemes = ["file"]']  # no example reaches for the network
    if styles is not None:
        _write(folder / "styles.parquet", styles, cuts[1])
        lines.append('styles = "styles.parquet"')
    (folder / "job.toml").write_text("\n".join(lines) + extra + "\n[generate]\nsteps = 2\nwidth = 64\nheight = 64\n")
    from pipeline.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(["validate", str(folder / "job.toml")])
    return code, err.getvalue()


# A file cut short, one time in eight.
cuts = st.tuples(st.booleans(), st.booleans(), st.booleans(), st.integers(0, 400)).map(
    lambda t: t[3] if all(t[:3]) else None)


@settings(max_examples=60, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
@given(manifest=tables(MANIFEST_NAMES, MANIFEST_BASE),
       styles=st.one_of(st.none(), tables(STYLES_NAMES, STYLES_BASE, most_rows=3)),
       cut=st.tuples(cuts, cuts))
def test_validate_names_problems_and_never_raises(manifest, styles, cut):
    with tempfile.TemporaryDirectory(dir=PLACE) as folder:
        (Path(folder) / "ok.png").write_bytes((PLACE / "ok.png").read_bytes())
        code, err = _validate(Path(folder), manifest, styles, cut)
    assert code in (0, 1), err
    if os.environ.get("FUZZ_LOG"):
        with open(os.environ["FUZZ_LOG"], "a") as log:
            log.write(f"{code} {err.splitlines()[0] if err else ''}\n")
    if code == 1:
        assert err.startswith("error: ") and "Traceback" not in err


def test_the_worst_of_them_leave_no_traceback_in_a_real_process(tmp_path):
    """The command as a scheduler runs it: the hostile values together, exit 1, the problems on
    stderr, no traceback and no panic (a panic is a BaseException: it would escape any handler)."""
    manifest = pa.table({
        "id": _bad_utf8([b"a", b"b\xff", b"c", b"d"]),
        "prompt": ["x", "y", "z", "w"],
        "seed": pa.array([1.5, float("nan"), float("inf"), 1.0]),
        "product_image": ["/dev/zero", str(PLACE / "pipe.png"), "/dev/null", "file://otherhost/x"],
        "price": pa.array([1, 2, 3, 4], pa.decimal256(40, 2)),
    }).replace_schema_metadata({b"k": b"\xff"})
    styles = pa.table({"style": ["s"], "prompt_templat": ["{prompt}"], "reference_image": ["/dev/urandom"]})
    (tmp_path / "m").mkdir()
    _write(tmp_path / "m" / "manifest.parquet", manifest, None)
    _write(tmp_path / "m" / "styles.parquet", styles, None)
    (tmp_path / "m" / "job.toml").write_text('[job]\nname = "x"\nmanifest = "manifest.parquet"\n'
                                             'styles = "styles.parquet"\n')
    for command in ("validate", "run"):
        r = subprocess.run([sys.executable, "-m", "pipeline", command, str(tmp_path / "m" / "job.toml")], cwd=ROOT,
                           capture_output=True, text=True, timeout=120, env=dict(os.environ))
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr and "panicked" not in r.stderr
        assert "/dev/urandom is a character device, not a regular file" in r.stderr
    pq.write_table(manifest.set_column(0, "id", pa.array(["a", "b", "c", "d"])), tmp_path / "m" / "manifest.parquet")
    (tmp_path / "m" / "job.toml").write_text('[job]\nname = "x"\nmanifest = "manifest.parquet"\n')
    r = subprocess.run([sys.executable, "-m", "pipeline", "validate", str(tmp_path / "m" / "job.toml")], cwd=ROOT,
                       capture_output=True, text=True, timeout=120, env=dict(os.environ))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    for needle in ("row 0 (id 'a'), column 'seed': wrong type: not a whole number, got 1.5",
                   "row 1 (id 'b'), column 'seed': wrong type: not a whole number, got nan",
                   "row 2 (id 'c'), column 'seed': wrong type: not a whole number, got inf"):
        assert needle in r.stderr


