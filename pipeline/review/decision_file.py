"""A reviewer's decisions file, read and parsed: CSV, JSON or Parquet, as report.html exports
it, into decisions (item_id, decision, note, prompt, strength), with a problem naming the row,
column and value of every bad one. What the decisions do is judge/'s; keeping them is
review/decisions.py's.
"""

from __future__ import annotations

import io
import json
import math
import posixpath

import pyarrow as pa

from pipeline.errors import ManifestError, Problem, refusal
from pipeline.spec import vocabulary
from pipeline.storage import tables, uris

COLUMNS = ("item_id", "decision", "note", "prompt", "strength")
# What makes two decisions the same (applying one again is a no-op).
SAME = ("decision", "note", "prompt", "strength")


def read_file(uri: str) -> list[dict]:
    """The records of a decisions file (CSV, JSON or Parquet, by its extension), as they are."""
    ext = posixpath.splitext(uri.split("?")[0])[1].lower()
    try:
        data = uris.read_bytes(uri)
    except Exception as e:  # noqa: BLE001 — missing, a device or pipe, too large, out of reach: named alike
        raise ManifestError([Problem(uri, refusal(e, uri, "decisions file", "file"))]) from None
    try:
        if ext == ".csv":
            import pyarrow.csv as pcsv

            names = pcsv.read_csv(io.BytesIO(data)).column_names
            table = pcsv.read_csv(io.BytesIO(data), convert_options=pcsv.ConvertOptions(
                column_types={n: pa.string() for n in names}, strings_can_be_null=False))
            return table.to_pylist()
        if ext == ".json":
            loaded = json.loads(data)
            records = loaded.get("decisions") if isinstance(loaded, dict) else loaded
            if not isinstance(records, list) or not all(isinstance(r, dict) for r in records):
                raise ValueError("expected a list of objects (item_id, decision, note, prompt, strength)")
            return records
        if ext == ".parquet":
            return tables.read(data).to_pylist()
    except (ValueError, pa.ArrowException) as e:
        raise ManifestError([Problem(uri, f"cannot read decisions: {e}")]) from None
    except RecursionError:
        raise ManifestError([Problem(uri, "cannot read decisions: nested too deep")]) from None
    raise ManifestError([Problem(uri, "decisions file must be .csv, .json or .parquet, "
                                      f"not {ext or 'no extension'!r}")])


def _text(value) -> str | None:
    """A cell as text: blanks (the page exports "" for 'none') are null."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    text = str(value).strip()
    return text or None


def _strength(value) -> float | None:
    """A refine's strength as a file gives it (a number, or text as CSV gives it), None when it
    gives none (null, blank); ValueError unless it is a number the job spec's own rule for a
    strength admits (LIMITS["strength"]): NaN, infinities, 0 and anything past 1 are refused,
    whichever format the file is."""
    from pipeline.spec.limits import LIMITS

    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        raise ValueError("a strength is a number, not true/false")
    try:
        number = float(value)
    except (TypeError, OverflowError) as e:
        raise ValueError(str(e)) from None
    if not LIMITS["strength"].allows(number):
        raise ValueError(f"outside {LIMITS['strength']}")
    return number


def parse(records: list[dict], uri: str) -> tuple[list[dict], list[Problem]]:
    """Records → decisions (item_id, decision, note, prompt, strength), and a problem naming the
    row, the column and the value of every bad one."""
    problems: list[Problem] = []
    if records and (missing := [c for c in ("item_id", "decision") if c not in records[0]]):
        raise ManifestError([Problem(uri, f"missing column(s) {', '.join(map(repr, missing))} "
                                          f"(a decisions file has {', '.join(COLUMNS)})")])
    parsed: dict[str, tuple[int, dict]] = {}
    for i, rec in enumerate(records):
        item, decision = _text(rec.get("item_id")), (_text(rec.get("decision")) or "").lower()
        d = {"item_id": item, "decision": decision, "note": _text(rec.get("note")),
             "prompt": _text(rec.get("prompt")), "strength": None}
        if item is None:
            problems.append(Problem(uri, "empty item_id", row=i, column="item_id"))
            continue
        if decision not in vocabulary.DECISIONS:
            problems.append(Problem(uri, f"{rec.get('decision')!r} is not a decision (one of "
                                         f"{', '.join(vocabulary.DECISIONS)})", row=i, id=item, column="decision"))
            continue
        if decision == vocabulary.REFINE:
            try:
                d["strength"] = _strength(rec.get("strength"))
            except ValueError:
                from pipeline.errors import show
                from pipeline.spec.limits import LIMITS

                given = show(str(rec.get("strength")).strip())
                problems.append(Problem(uri, f"strength {given} is not a number {LIMITS['strength']}", row=i,
                                        id=item, column="strength"))
                continue
        if decision != vocabulary.REFINE:
            d["prompt"] = None  # a prompt change or a strength only mean something to a refine
        if item in parsed and {k: parsed[item][1][k] for k in SAME} != {k: d[k] for k in SAME}:
            problems.append(Problem(uri, f"item {item} is decided twice, differently (first in row "
                                         f"{parsed[item][0]})", row=i, id=item, column="item_id"))
            continue
        parsed[item] = (i, d)
    return [d | {"_row": i} for i, d in parsed.values()], problems
