"""`pipeline identify FILE… --output DIR…`: which output, row and item an image came from.

- Its manifest intact: the generation assertion names the item; its validation state is read
  with the output's trust anchors.
- Its metadata stripped (a platform re-encoded it): the invisible watermark is read, at the file's
  size and scaled back to each size the outputs wrote with its aspect, and its payload looked up
  in each output's index (built once per output, from its results table); the original file's
  manifest is validated, and how many payload bits were off says how sure the match is. Equal
  best matches of several items are a payload collision and are all named.
- Neither: not found.
"""

from __future__ import annotations

import io
import mimetypes
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.provenance import watermark as wm
from pipeline.spec.channel_formats import delivered_size
from pipeline.storage.records import read_results
from pipeline.storage.store import Output, as_output

# What a match tells of the row it came from (sku: a passthrough column, where the manifest has it).
RECORD = ["item_id", "id", "row", "sku", "prompt", "seed", "variant", "path", "status"]
INDEXED = [*RECORD, "watermark", "width", "height", "clean_path"]


@dataclass
class Match:
    output: str
    record: dict  # RECORD's columns of the matched row
    original_state: str | None = None  # the original file's C2PA validation state (a stripped copy's)
    bit_errors: int | None = None  # watermark bits that differed (a stripped copy's)
    confidence: float | None = None  # share of the payload's bits that agreed


@dataclass
class Identified:
    file: str
    how: str  # "manifest" | "watermark" | "not found"
    state: str | None = None  # the file's own C2PA validation state (Missing when stripped)
    read_at: tuple[int, int] | None = None  # the size the watermark was read at
    matches: list[Match] = field(default_factory=list)
    collision: bool = False  # several items match equally well

    @property
    def found(self) -> bool:
        return bool(self.matches)

    def to_dict(self) -> dict:
        return {**asdict(self), "found": self.found}


class OutputIndex:
    """One output's written files, read once: their records, item ids and watermark payloads."""

    def __init__(self, output: Output | str):
        self.out = as_output(output)
        table = read_results(self.out, INDEXED)
        table = table.filter(pc.is_valid(table["path"]))
        for name in INDEXED:
            if name not in table.column_names:
                table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
        self.table = table
        # item ids by their first 64 bits, sorted: a manifest's item found by binary search
        prefixes = _prefixes(table["item_id"])
        self._order = np.argsort(prefixes, kind="stable")
        self._sorted = prefixes[self._order]
        self.payloads: dict[str, tuple[np.ndarray, np.ndarray]] = {}  # method → (payloads, row numbers)
        self.sizes: dict[str, set[tuple[int, int]]] = {}  # method → the sizes its images were delivered at
        methods = table["watermark"].to_pylist()
        for name in {m for m in methods if m in wm.METHODS}:
            method = wm.METHODS[name]
            rows = np.flatnonzero(pc.equal(table["watermark"], name).to_numpy(zero_copy_only=False))
            assert method.bits == 64, "payloads are the item ids' first 64 bits"
            self.payloads[name] = (prefixes[rows], rows)
            shapes = table.select(["width", "height", "variant"]).take(pa.array(rows)).to_pylist()
            self.sizes[name] = {delivered_size(s["width"], s["height"], s["variant"]) for s in shapes}

    def record(self, row: int) -> dict:
        return {k: v for k, v in self.table.select(RECORD).slice(row, 1).to_pylist()[0].items()}

    def by_item(self, item_id: str) -> list[int]:
        """The rows of an item id (its files: one, or an overlaid image and its clean one's row)."""
        try:
            key = np.uint64(int(item_id[:16], 16))
        except ValueError:  # not an item id of ours
            return []
        lo, hi = np.searchsorted(self._sorted, key, "left"), np.searchsorted(self._sorted, key, "right")
        rows = sorted(self._order[lo:hi].tolist())
        return [r for r in rows if self.table["item_id"][r].as_py() == item_id]

    def nearest(self, method: wm.Method, payload: str) -> tuple[int, list[int]]:
        """(the fewest bits off, the rows of distinct items that close) for a payload read back."""
        if method.name not in self.payloads:
            return method.bits + 1, []
        payloads, rows = self.payloads[method.name]
        errors = np.bitwise_count(payloads ^ np.uint64(int(payload, 16)))
        best = int(errors.min())
        hits = rows[errors == best].tolist()
        seen, distinct = set(), []
        for r in hits:  # an item's clean and overlaid files are one item
            item = self.table["item_id"][r].as_py()
            if item not in seen:
                seen.add(item)
                distinct.append(r)
        return best, distinct


def _prefixes(item_ids: pa.ChunkedArray) -> np.ndarray:
    """The first 64 bits of each item id (hex), as unsigned integers, parsed in one pass."""
    heads = pc.utf8_slice_codeunits(item_ids, 0, 16).to_pylist()
    return np.frombuffer(bytes.fromhex("".join(heads)), ">u8").astype(np.uint64)


def _pixels(data: bytes) -> tuple[np.ndarray | None, str | None]:
    from PIL import Image, UnidentifiedImageError

    try:
        image = Image.open(io.BytesIO(data))
        mime = Image.MIME.get(image.format or "")
        return np.asarray(image.convert("RGB")), mime
    except (UnidentifiedImageError, OSError):
        return None, None


def identify(files: list[str], outputs: list[str], trust_anchors: str | None = None) -> list[Identified]:
    """Each file identified against `outputs` (folders or object-storage prefixes)."""
    from pipeline.provenance.readback import verify_bytes
    from pipeline.review.verify import read_anchors

    indexes = [OutputIndex(o) for o in outputs]
    anchors = {ix.out.uri: read_anchors(ix.out, trust_anchors) for ix in indexes}
    found = []
    for name in files:
        data = Path(name).read_bytes()
        rgb, mime = _pixels(data)
        mime = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
        result = Identified(name, "not found")
        checks = {uri: verify_bytes(data, mime, a) for uri, a in anchors.items()} if rgb is not None else {}
        for ix in indexes:  # 1. its own manifest names the item
            check = checks.get(ix.out.uri)
            item = (check.generation or {}).get("item_id") if check else None
            for row in ix.by_item(item) if item else []:
                result.how, result.state = "manifest", check.state
                result.matches.append(Match(ix.out.uri, ix.record(row)))
        if not result.matches and rgb is not None:  # 2. the watermark names it
            result.state = next(iter(checks.values())).state if checks else None
            _by_watermark(result, rgb, indexes, anchors)
        found.append(result)
    return found


def _by_watermark(result: Identified, rgb: np.ndarray, indexes: list[OutputIndex], anchors: dict) -> None:
    """The closest payload over every size and index, when it is close enough (`watermark.matches`)."""
    from pipeline.provenance.readback import verify_bytes

    best: tuple[int, list[tuple[OutputIndex, int]], tuple[int, int] | None] = (10**9, [], None)
    for name in sorted({m for ix in indexes for m in ix.payloads}):
        method = wm.METHODS[name]
        sizes = set().union(*(ix.sizes.get(name, set()) for ix in indexes))
        for size, read in wm.decode_at(rgb, method, sizes):
            for ix in indexes:
                errors, rows = ix.nearest(method, read)
                if errors > method.max_bit_errors or not rows:
                    continue
                if errors < best[0]:
                    best = (errors, [(ix, r) for r in rows], size)
                elif errors == best[0]:
                    best[1].extend((ix, r) for r in rows if (ix, r) not in best[1])
            if best[0] == 0:
                break
    errors, hits, size = best
    if not hits:
        return
    result.how, result.read_at = "watermark", size
    result.collision = len({ix.table["item_id"][r].as_py() for ix, r in hits}) > 1 or len(hits) > 1
    for ix, row in hits:
        record = ix.record(row)
        original = ix.out.get(record["path"])
        mime = mimetypes.guess_type(record["path"])[0] or "image/png"
        bits = wm.METHODS[ix.table["watermark"][row].as_py()].bits
        result.matches.append(Match(ix.out.uri, record, verify_bytes(original, mime, anchors[ix.out.uri]).state,
                                    errors, round(1 - errors / bits, 3)))


def describe(r: Identified) -> str:
    """One paragraph a person reads."""
    if not r.found:
        return f"{r.file}: not found (no manifest of these outputs, no watermark of theirs)"
    head = (f"{r.file}: manifest intact, C2PA {r.state}" if r.how == "manifest" else
            f"{r.file}: metadata stripped (C2PA {r.state}); watermark read at {r.read_at[0]}×{r.read_at[1]}")
    if r.collision:
        head += f"; payload collision: {len(r.matches)} images match equally"
    lines = [head]
    for m in r.matches:
        rec = m.record
        where = f"  {m.output}: row {rec['row']} (id {rec['id']!r}), item {rec['item_id']}"
        if rec.get("variant"):
            where += f", format {rec['variant']}"
        lines.append(where + (f", sku {rec['sku']}" if rec.get("sku") is not None else "")
                     + f", seed {rec['seed']}, prompt {rec['prompt']!r}, file {rec['path']}")
        if m.bit_errors is not None:
            lines.append(f"    {m.bit_errors} bits off (confidence {m.confidence:.3f}); "
                         f"the original's manifest: C2PA {m.original_state}")
    return "\n".join(lines)
