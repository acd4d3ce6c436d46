"""Hostile job and decisions files through the command line, in-process: whatever the bytes, a
command exits 0 or 1 (an error naming the problem) and nothing else escapes: no traceback, no
hang. Mutations of the demo job (random bytes, truncation, values of another type, unknown keys,
deep nesting, other encodings) and of a decisions file (CSV, JSON, Parquet with random values).
Bounded: a few dozen examples each, no generation."""

from __future__ import annotations

import contextlib
import io
import json
import math
import shutil
import tempfile
import tomllib
from datetime import datetime
from pathlib import Path
from unittest import mock

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def demo_job(folder: Path) -> str:
    """The demo job's text with its inputs by absolute path and its output in `folder`."""
    text = (ROOT / "jobs" / "demo.toml").read_text()
    text = text.replace('"../manifests/', f'"{ROOT / "manifests"}/').replace('"../out/demo"', f'"{folder / "out"}"')
    assert str(ROOT / "manifests") in text
    return text


def toml_value(v) -> str:
    """A Python value as TOML writes it (the generators below make only what TOML can hold)."""
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return "nan" if math.isnan(v) else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, datetime):
        return v.isoformat()
    if isinstance(v, list):
        return "[" + ", ".join(map(toml_value, v)) + "]"
    return "{" + ", ".join(f"{json.dumps(k, ensure_ascii=False)} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_doc(data: dict) -> str:
    lines = []
    for section, keys in data.items():
        if not isinstance(keys, dict):
            lines.append(f"{json.dumps(section, ensure_ascii=False)} = {toml_value(keys)}")
            continue
        lines.append(f"[{json.dumps(section, ensure_ascii=False)}]")
        lines += [f"{json.dumps(k, ensure_ascii=False)} = {toml_value(v)}" for k, v in keys.items()]
    return "\n".join(lines) + "\n"


# Text TOML can hold in a basic string: no surrogates, no DEL/control characters left raw.
texts = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x7f"), max_size=24)
# Path-like values that have hurt before: folders, devices, the empty path, URIs with no place.
odd_paths = st.sampled_from(["", ".", "/", "/dev/zero", "/dev/null", "~", "nope.parquet", "s3://", "memory://x/y",
                             "embedded:", "embedded:no-such-model", "file:///", "a\x00b", "../" * 40, "x" * 5000])
scalars = st.one_of(st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
                    texts, odd_paths, st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31)))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
                      max_leaves=6)


def _keys() -> list[tuple[str, str, str]]:
    """(section, key, type) of every key the job spec has."""
    from dataclasses import fields

    from pipeline.spec.config import SECTION_TYPES

    return [(name, f.name, str(f.type).replace(" | None", "")) for name, cls in SECTION_TYPES.items()
            for f in fields(cls)]


KEYS = _keys()
ODD = {
    "str": st.one_of(odd_paths, texts, st.sampled_from(["demo", "files", "png", "jpeg", "es256", "rot13", "cuda:9",
                                                         "embedded:tiny-sdxl", "embedded:tiny-clip-head"])),
    "int": st.one_of(st.integers(-3, 70), st.integers(-(2**64), 2**64)),
    "float": st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.floats(-2, 2)),
    "bool": st.booleans(),
    "tuple[str, ...]": st.lists(st.one_of(odd_paths, texts), max_size=3),
    "tuple[Throughput, ...]": st.lists(st.fixed_dictionaries(
        {"model": st.one_of(odd_paths, st.just("embedded:tiny-sd")), "width": st.integers(-8, 5000),
         "height": st.sampled_from([64, 0, 4096]), "steps": st.integers(-1, 2000),
         "seconds_per_image": st.floats(allow_nan=True, allow_infinity=True)}), max_size=2),
}


@st.composite
def mutated_job(draw, base: str) -> bytes:
    """One hostile job file, made from the demo job's text."""
    data = tomllib.loads(base)
    how = draw(st.sampled_from(["bytes", "truncate", "flip", "swap", "odd", "odd", "unknown", "nest", "encode"]))
    if how == "bytes":
        return draw(st.binary(max_size=600))
    raw = base.encode()
    if how == "truncate":
        return raw[:draw(st.integers(0, len(raw)))]
    if how == "flip":
        at = draw(st.lists(st.integers(0, len(raw) - 1), min_size=1, max_size=4))
        out = bytearray(raw)
        for i in at:
            out[i] = draw(st.integers(0, 255))
        return bytes(out)
    if how == "swap":  # a key's value of another type, or a section that is not a table
        for _ in range(draw(st.integers(1, 3))):
            section = draw(st.sampled_from(sorted(data)))
            if draw(st.booleans()) and isinstance(data[section], dict) and data[section]:
                data[section][draw(st.sampled_from(sorted(data[section])))] = draw(values)
            elif draw(st.integers(0, 5)) == 0:
                data[section] = draw(scalars)
        return toml_doc(data).encode()
    if how == "odd":  # values of the right type that are wrong otherwise: every key of the spec may get one
        for _ in range(draw(st.integers(1, 3))):
            section, key, kind = draw(st.sampled_from(KEYS))
            data.setdefault(section, {})[key] = draw(ODD[kind])
        return toml_doc(data).encode()
    if how == "unknown":
        section = draw(st.sampled_from(sorted(data) + ["jobs", "model", "x"]))
        data.setdefault(section, {})[draw(texts)] = draw(values)
        return toml_doc(data).encode()
    if how == "nest":
        depth = draw(st.integers(1, 3000))
        section, key = draw(st.sampled_from([("job", "manifest"), ("models", "unsafe_labels"), ("x", "y")]))
        data.setdefault(section, {})[key] = "@"
        nested = "[" * depth + "1" + "]" * depth if draw(st.booleans()) else "{a = " * depth + "1" + "}" * depth
        return toml_doc(data).replace(toml_value("@"), nested, 1).encode()
    encoding = draw(st.sampled_from(["utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252", "utf-8-sig"]))
    text = base.replace('name = "demo"', f'name = "{draw(st.sampled_from(["démo", "デモ", "demo", "€"]))}"')
    return text.encode(encoding, errors="replace")


def run_cli(*argv: str) -> tuple[int, str]:
    """main() in this process: (exit status, stderr). SystemExit (argparse) counts as an exit."""
    err = io.StringIO()
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
        try:
            code = main(list(argv))
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
    return code, err.getvalue()


@pytest.fixture(scope="module")
def folder():
    with tempfile.TemporaryDirectory(prefix="fuzz-job-") as d:
        yield Path(d)


def test_mutated_job_files_exit_0_or_1_with_a_message(folder):
    base = demo_job(folder)

    @SETTINGS
    @given(mutated_job(base))
    def check(data: bytes):
        path = folder / "job.toml"
        path.write_bytes(data)
        for command in ("validate", "plan"):
            code, err = run_cli(command, str(path))
            assert code in (0, 1), (command, code, err[-2000:])
            assert code == 0 or err.startswith("error: "), (command, err[-2000:])

    check()


# ── decisions ───────────────────────────────────────────────────────────────
COLUMNS = ["item_id", "decision", "note", "prompt", "strength"]
cells = st.one_of(st.none(), st.booleans(), st.integers(-(2**70), 2**70),
                  st.floats(allow_nan=True, allow_infinity=True), texts,
                  st.sampled_from(["approve", "reject", "refine", "REFINE ", "nan", "inf", "-0", "1e999", ""]))


@pytest.fixture(scope="module")
def reviewed(folder):
    """An output with a results table over the demo job's real plan (no image generated): its
    item ids are what a decisions file names. Returns (job file, output folder, item ids)."""
    job = folder / "reviewed.toml"
    job.write_text(demo_job(folder))
    assert run_cli("plan", str(job), "--out", str(folder / "plan.parquet"))[0] == 0
    plan = pq.read_table(folder / "plan.parquet")
    n = plan.num_rows
    ids = plan["item_id"].to_pylist()
    results = pa.table({
        "item_id": ids, "id": plan["id"], "keep": plan["keep"] if "keep" in plan.column_names else [1] * n,
        "status": (["written", "rejected", "error"] * n)[:n], "reason": ([None, "not_selected", "generate"] * n)[:n],
        "path": [f"images/{i[:2]}/{i}.png" if k % 3 == 0 else None for k, i in enumerate(ids)],
        "steps": [4] * n, "moderation": (["pass", "pass", "block"] * n)[:n], "parent": pa.nulls(n, pa.string())})
    out = folder / "out"
    out.mkdir(exist_ok=True)
    pq.write_table(results, out / "results.parquet")
    return job, out, ids


@st.composite
def decisions_file(draw, ids: list[str]) -> tuple[str, bytes, list[dict]]:
    """A decisions file in one of the three formats: rows mostly about real candidates with real
    decisions (so some apply), their values drawn from the plausible and the hostile."""
    ext = draw(st.sampled_from([".csv", ".json", ".parquet"]))
    if draw(st.integers(0, 9)) == 0:
        return ext, draw(st.binary(max_size=300)), []
    refinable = ids[::3]  # written, with an image, passed moderation (see `reviewed`)
    plausible = st.fixed_dictionaries({  # as the report page exports them, now and then with a hostile strength
        "item_id": st.sampled_from(refinable), "decision": st.sampled_from(["approve", "reject", "refine", " Refine "]),
        "note": st.one_of(st.none(), texts), "prompt": st.one_of(st.none(), texts),
        "strength": st.one_of(st.none(), st.floats(0.3, 1), st.sampled_from(["0.5", " 1 "]), cells,
                              st.sampled_from([math.nan, math.inf, -math.inf, -1.0, 0.0, 1.5, "abc", "nan", True]))})
    hostile = st.fixed_dictionaries({"item_id": st.one_of(st.sampled_from(ids), cells), "decision": cells,
                                     "note": cells, "prompt": cells, "strength": cells})
    rows = draw(st.lists(st.one_of(plausible, plausible, plausible, hostile), max_size=3,
                         unique_by=lambda r: str(r["item_id"])))
    if ext == ".json":
        return ext, json.dumps(rows if draw(st.booleans()) else {"decisions": rows}).encode(), rows
    if ext == ".csv":
        import csv

        text = io.StringIO()
        writer = csv.writer(text)
        writer.writerow(COLUMNS)
        writer.writerows([["" if r[c] is None else r[c] for c in COLUMNS] for r in rows])
        return ext, text.getvalue().encode(), rows
    table = {}
    for c in COLUMNS:  # one Arrow type a column: numbers, else text
        column = [r[c] for r in rows]
        numbers = all(v is None or (isinstance(v, float | int) and not isinstance(v, bool) and abs(v) < 2**63)
                      for v in column)
        table[c] = pa.array(column, pa.float64()) if numbers and c == "strength" else \
            pa.array([None if v is None else str(v) for v in column], pa.string())
    sink = io.BytesIO()
    pq.write_table(pa.table(table), sink)
    return ext, sink.getvalue(), rows


def test_mutated_decisions_files_exit_0_or_1_with_a_message(reviewed, folder):
    """`run --decisions` up to the point where generation would start (the run itself is
    stubbed): reading, checking, planning with and recording the decisions."""
    from pipeline.run import record

    job, out, ids = reviewed
    seen = {"recorded": 0}

    def refine(ext: str, strength: float) -> tuple[str, bytes, list[dict]]:
        """A refine of a real candidate with `strength`, as JSON or Parquet carry a float."""
        rows = [{"item_id": ids[0], "decision": "refine", "note": None, "prompt": None, "strength": strength}]
        if ext == ".json":
            return ext, json.dumps(rows).encode(), rows
        sink = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, pa.schema([(c, pa.float64() if c == "strength" else pa.string())
                                                              for c in COLUMNS])), sink)
        return ext, sink.getvalue(), rows

    @settings(SETTINGS, max_examples=40)
    @example(refine(".json", math.nan))  # each taken for 'no strength' once, and refined at the default
    @example(refine(".parquet", math.nan))
    @example(refine(".json", 0.5))
    @given(decisions_file(ids))
    def check(file: tuple[str, bytes, list[dict]]):
        ext, data, rows = file
        shutil.rmtree(out / "_decisions", ignore_errors=True)  # each example on the results alone
        path = folder / f"decisions{ext}"
        path.write_bytes(data)
        # the run stops with exit 0 where its work would start (its run record is written first)
        with mock.patch.object(record, "write", side_effect=SystemExit(0)):
            code, err = run_cli("run", str(job), "--in-process", "--log-format", "json", "--decisions", str(path))
        assert code in (0, 1), (code, err[-2000:])
        assert code == 0 or json.loads(err.splitlines()[-1])["event"] == "error", err[-2000:]
        if code == 0:  # what was recorded is what the rules admit: a refine's strength in (0, 1] or none
            parts = sorted((out / "_decisions").glob("*.parquet")) if (out / "_decisions").exists() else []
            recorded = pa.concat_tables([pq.read_table(p) for p in parts]).to_pylist() if parts else []
            seen["recorded"] += len(recorded)
            given = {str(r["item_id"]).strip(): r["strength"] for r in rows}
            for d in recorded:
                assert d["decision"] in ("approve", "reject", "refine") and d["item_id"] in ids, d
                if d["decision"] == "refine":  # the strength the file gave, or none where it gave none
                    s = given[d["item_id"]]
                    blank = s is None or (isinstance(s, str) and not s.strip())
                    assert (d["strength"] is None) if blank else d["strength"] == float(s), (s, d)
                    assert d["strength"] is None or 0 < d["strength"] <= 1, d

    check()
    assert seen["recorded"], "no example got as far as recording a decision"
