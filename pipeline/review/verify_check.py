"""What `verify` checks of one listed image, and how the results table lists images.

An entry is one file the table promises: a row's `path`, and beside an overlaid image the image
as generated (`clean_path`), checked the same way but for the manifest label, which the table
records only for the delivered image. A row with status written and no path is an entry without
a file: a problem of the table, found without reading anything.

`check` reads one file and returns what is wrong with it; it keeps no bytes once it returns, so
a pool of threads running it holds one image per thread.
"""

from __future__ import annotations

import mimetypes
from typing import NamedTuple

import pyarrow as pa

from pipeline.spec import vocabulary
from pipeline.storage.store import Output

# The columns of the results table verify reads (those an older output lacks read as nulls).
COLUMNS = ["item_id", "status", "path", "sha256", "c2pa_label", "watermark", "clean_path", "clean_sha256"]
FILES = ["path", "clean_path"]  # the columns that name files


class Entry(NamedTuple):
    index: int  # the file's place in the table's listing (rows in order, a row's clean image after it)
    item: str
    status: str
    rel: str | None
    sha256: str | None
    label: str | None  # the recorded manifest label (None: not compared)
    watermark: str | None  # the watermark method the row records


class Checked(NamedTuple):
    entry: Entry
    read: bool  # whether the file could be read (`verify` counts those)
    problems: list[str]


def entries(batch: pa.RecordBatch, start: int) -> list[Entry]:
    """The entries of a batch of the results table, numbered from `start` (files only)."""
    n = batch.num_rows
    col = {c: (batch.column(c).to_pylist() if c in batch.schema.names else [None] * n) for c in COLUMNS}
    found: list[Entry] = []
    for i in range(n):
        item, status = col["item_id"][i], col["status"][i]
        found.append(Entry(start + len(found), item, status, col["path"][i], col["sha256"][i],
                           col["c2pa_label"][i], col["watermark"][i]))
        if col["clean_path"][i]:
            found.append(Entry(start + len(found), item, status, col["clean_path"][i], col["clean_sha256"][i],
                               None, col["watermark"][i]))
    return [e for e in found if e.rel or e.status == vocabulary.WRITTEN]


def check(out: Output, entry: Entry, anchors: bytes | None) -> Checked:
    """Read `entry`'s file and check its sha256, its C2PA manifest (state, label) and its watermark."""
    from pipeline.provenance.readback import verify_bytes
    from pipeline.storage.write import sha256_hex

    rel = entry.rel
    if not rel:
        return Checked(entry, False, [f"{entry.item}: status written but no path"])
    try:
        data = out.get(rel)
    except (OSError, ValueError) as e:
        return Checked(entry, False, [f"{rel}: cannot read ({e})"])
    problems = []
    if sha256_hex(data) != entry.sha256:
        problems.append(f"{rel}: sha256 differs from the results table")
    found = verify_bytes(data, mimetypes.guess_type(rel)[0] or "image/png", anchors)
    if not found.ok:
        problems.append(f"{rel}: C2PA {found.state} {', '.join(found.errors)}".rstrip())
    elif entry.label and found.label != entry.label:
        problems.append(f"{rel}: C2PA manifest {found.label} is not the recorded {entry.label}")
    if entry.watermark and found.ok:
        problems += [f"{rel}: {p}" for p in watermark_problems(data, entry.item, entry.watermark, found.soft_binding)]
    return Checked(entry, True, problems)


def watermark_problems(data: bytes, item_id: str, method_name: str, binding: dict | None) -> list[str]:
    """What is wrong with an image's watermark: its soft binding must name the method and the item's
    payload, and the pixels must carry that payload (the one rule of `watermark.matches`)."""
    from pipeline.provenance.watermark import METHODS, lost, payload_for

    method = METHODS.get(method_name)
    if method is None:
        return [f"watermark method {method_name!r} is not one this version reads"]
    payload = payload_for(item_id, method)
    blocks = (binding or {}).get("blocks") or [{}]
    if not binding or binding.get("alg") != method.alg or blocks[0].get("value") != payload:
        return [f"the soft binding {binding} is not {method.alg} with payload {payload}"]
    return [why] if (why := lost(data, method, payload)) else []
