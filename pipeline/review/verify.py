"""`pipeline verify DIR`: every written image re-read, its sha256 and C2PA manifest checked
against the results table; files that neither the table nor a committed shard lists, and
listed files that are gone, are problems too.
"""

from __future__ import annotations

import mimetypes
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline.run.shards import ShardStore
from pipeline.spec import vocabulary
from pipeline.storage.layout import DEMO_CA, RESULTS
from pipeline.storage.records import latest_run, read_results
from pipeline.storage.store import Output, as_output


class MissingAnchors(ValueError):
    """A trust-anchor file that was asked for is gone: verifying without it would check less than asked."""


def read_anchors(out: Output, trust_anchors: str | None) -> bytes | None:
    """The PEM of the CAs to trust: the file given; else the run's own: its demo CA in demo
    mode, or the trust anchors it was configured with (None when it had none)."""
    if trust_anchors:
        path = Path(trust_anchors)
        if not path.is_file():
            raise MissingAnchors(f"{path}: trust anchors not found (--trust-anchors)")
        return path.read_bytes()
    latest = latest_run(out)
    signer = latest.record["config"]["signer"] if latest else {}
    if out.exists(DEMO_CA) or signer.get("mode") == "demo":
        if not out.exists(DEMO_CA):
            raise MissingAnchors(f"{out.where(DEMO_CA)}: trust anchors not found (the run's demo CA)")
        return out.get(DEMO_CA)
    configured = signer.get("trust_anchors")
    if not configured:
        return None
    if not Path(configured).is_file():
        raise MissingAnchors(f"{configured}: trust anchors not found ([signer].trust_anchors of "
                             f"{latest.name})")
    return Path(configured).read_bytes()


CHECKED = ["item_id", "status", "path", "sha256", "c2pa_label", "watermark"]


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


def verify_output(output: Output | Path | str, trust_anchors: str | None = None) -> tuple[list[str], int]:
    """(problems, images checked). No problems means every promise of the table holds."""
    from pipeline.provenance.readback import verify_bytes
    from pipeline.storage.write import sha256_hex

    out = as_output(output)
    if not out.exists(RESULTS):
        return [f"{out.where(RESULTS)}: no results table"], 0
    try:
        anchors = read_anchors(out, trust_anchors)
    except MissingAnchors as e:
        return [str(e)], 0
    table = read_results(out, [*CHECKED, "clean_path", "clean_sha256"])
    if "watermark" not in table.column_names:  # an output written before watermarks
        table = table.append_column("watermark", pa.nulls(table.num_rows, pa.string()))
    if "clean_path" in table.column_names:  # the image as generated beside an overlaid one: checked the same way
        clean = table.filter(pc.is_valid(table["clean_path"]))
        table = pa.concat_tables([table.select(CHECKED),
                                  pa.table({"item_id": clean["item_id"], "status": clean["status"],
                                            "path": clean["clean_path"], "sha256": clean["clean_sha256"],
                                            "c2pa_label": pa.nulls(clean.num_rows, pa.string()),
                                            "watermark": clean["watermark"]})])
    problems: list[str] = []
    checked = 0
    listed = set()
    for item, status, rel, digest, label, method in zip(*(table[c].to_pylist() for c in CHECKED), strict=True):
        if status == vocabulary.WRITTEN and not rel:
            problems.append(f"{item}: status written but no path")
        if not rel:
            continue
        listed.add(rel)
        try:
            data = out.get(rel)
        except (OSError, ValueError) as e:
            problems.append(f"{rel}: cannot read ({e})")
            continue
        checked += 1
        if sha256_hex(data) != digest:
            problems.append(f"{rel}: sha256 differs from the results table")
        check = verify_bytes(data, mimetypes.guess_type(rel)[0] or "image/png", anchors)
        if not check.ok:
            problems.append(f"{rel}: C2PA {check.state} {', '.join(check.errors)}".rstrip())
        elif label and check.label != label:
            problems.append(f"{rel}: C2PA manifest {check.label} is not the recorded {label}")
        if method and check.ok:
            problems += [f"{rel}: {p}" for p in watermark_problems(data, item, method, check.soft_binding)]
    # A file of an earlier plan (a prompt since edited) stays listed by its committed shard.
    committed = ShardStore(out).committed()
    for rel in sorted(committed.files - listed - committed.listed):
        problems.append(f"{rel}: file not listed in the results table nor in any committed shard")
    return problems, checked
