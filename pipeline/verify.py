"""`pipeline verify DIR`: every written image re-read, its sha256 and C2PA manifest checked
against the results table; files that neither the table nor a committed shard lists, and
listed files that are gone, are problems too.
"""

from __future__ import annotations

import json
import mimetypes
from pathlib import Path

import pyarrow.parquet as pq

from pipeline import schema
from pipeline.results import RESULTS, ShardStore

DEMO_CA = Path("_demo_signer") / "ca.pem"


class MissingAnchors(ValueError):
    """A trust-anchor file that was asked for is gone: verifying without it would check less than asked."""


def default_anchors(output_dir: Path) -> tuple[Path | None, str]:
    """(the CAs the latest run trusted, where that comes from): its demo CA in demo mode, else the
    trust anchors it was configured with; (None, ...) when it was configured with none."""
    if (output_dir / DEMO_CA).is_file():
        return output_dir / DEMO_CA, "the run's demo CA"
    runs = sorted((output_dir / "_runs").glob("*.json"), key=lambda p: p.stat().st_mtime)
    if not runs:
        return None, "no run record"
    signer = json.loads(runs[-1].read_text())["config"]["signer"]
    if signer.get("mode") == "demo":
        return output_dir / DEMO_CA, "the run's demo CA"
    configured = signer.get("trust_anchors")
    return (Path(configured) if configured else None), f"[signer].trust_anchors of {runs[-1].name}"


def read_anchors(output_dir: Path, trust_anchors: str | None) -> bytes | None:
    """The PEM of the CAs to trust: the file given, else the run's own (default_anchors)."""
    path, origin = (Path(trust_anchors), "--trust-anchors") if trust_anchors else default_anchors(output_dir)
    if path is None:
        return None
    if not path.is_file():
        raise MissingAnchors(f"{path}: trust anchors not found ({origin})")
    return path.read_bytes()


def verify_output(output_dir: Path, trust_anchors: str | None = None) -> tuple[list[str], int]:
    """(problems, images checked). No problems means every promise of the table holds."""
    from pipeline.provenance import verify_bytes
    from pipeline.write import safe_join, sha256_hex

    path = output_dir / RESULTS
    if not path.is_file():
        return [f"{path}: no results table"], 0
    try:
        anchors = read_anchors(output_dir, trust_anchors)
    except MissingAnchors as e:
        return [str(e)], 0
    table = pq.read_table(path, columns=["item_id", "status", "path", "sha256", "c2pa_label"])
    problems: list[str] = []
    checked = 0
    listed = set()
    for item, status, rel, digest, label in zip(*(table[c].to_pylist() for c in table.column_names),
                                                strict=True):
        if status == schema.WRITTEN and not rel:
            problems.append(f"{item}: status written but no path")
        if not rel:
            continue
        listed.add(rel)
        try:
            file = safe_join(output_dir, rel)
            data = file.read_bytes()
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
    # A file of an earlier plan (a prompt since edited) stays listed by its committed shard.
    committed = ShardStore(output_dir).committed()
    for rel in sorted(committed.files - listed - committed.listed):
        problems.append(f"{rel}: file not listed in the results table nor in any committed shard")
    return problems, checked
