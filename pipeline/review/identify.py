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
from pipeline.storage.layout import RESULTS
from pipeline.storage.records import iter_parquet
from pipeline.storage.store import Output, as_output

# What a match tells of the row it came from (sku: a passthrough column, where the manifest has it).
RECORD = ["item_id", "id", "row", "sku", "prompt", "seed", "variant", "path", "status"]
INDEXED = ["item_id", "path", "watermark", "width", "height", "variant"]  # what the index reads


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
    item_id: str | None = field(default=None, repr=False)  # the item its manifest names


    @property
    def found(self) -> bool:
        return bool(self.matches)

    def to_dict(self) -> dict:
        return {**{k: v for k, v in asdict(self).items() if k != "item_id"}, "found": self.found}


class OutputIndex:
    """One output's written files, read once and streamed: of each, its results row number, the
    first 64 bits of its item id (sorted: a manifest's item found by binary search; the watermark's
    payload, compared by Hamming distance) and its watermark method; per method, the sizes its
    images were delivered at. About 9 bytes a file: the records themselves are read only for the
    rows that match (`records`), in one more pass."""

    def __init__(self, output: Output | str):
        self.out = as_output(output)
        rows, prefixes, methods = [], [], []
        self.sizes: dict[str, set[tuple[int, int]]] = {}  # method → the sizes its images were delivered at
        names = list(wm.METHODS)
        offset = 0
        for batch in iter_parquet(self.out, RESULTS, INDEXED):
            table = pa.Table.from_batches([batch])
            for name in INDEXED:  # an output written before a column existed
                if name not in table.column_names:
                    table = table.append_column(name, pa.nulls(table.num_rows, pa.string()))
            filed = pc.is_valid(table["path"]).to_numpy(zero_copy_only=False)
            kept = table.filter(pa.array(filed))
            rows.append(np.flatnonzero(filed) + offset)
            prefixes.append(_prefixes(kept["item_id"]))
            method = kept["watermark"].to_pylist()
            methods.append(np.array([names.index(m) if m in wm.METHODS else -1 for m in method], np.int8))
            for m, w, h, v in zip(method, *(kept[c].to_pylist() for c in ("width", "height", "variant")), strict=True):
                if m in wm.METHODS:
                    self.sizes.setdefault(m, set()).add(delivered_size(w, h, v))
            offset += table.num_rows
        self.rows = np.concatenate(rows) if rows else np.zeros(0, np.int64)
        self.prefixes = np.concatenate(prefixes) if prefixes else np.zeros(0, np.uint64)
        self.methods = np.concatenate(methods) if methods else np.zeros(0, np.int8)
        self._order = np.argsort(self.prefixes, kind="stable")
        self._sorted = self.prefixes[self._order]
        self._names = names

    def method_of(self, i: int) -> wm.Method:
        return wm.METHODS[self._names[self.methods[i]]]

    def by_item(self, item_id: str) -> list[int]:
        """The entries (indexes into `rows`) whose item id begins as `item_id` does (`records`
        confirms the whole id)."""
        try:
            key = np.uint64(int(item_id[:16], 16))
        except ValueError:  # not an item id of ours
            return []
        lo, hi = np.searchsorted(self._sorted, key, "left"), np.searchsorted(self._sorted, key, "right")
        return sorted(self._order[lo:hi].tolist())

    def nearest(self, method: wm.Method, payload: str) -> tuple[int, list[int]]:
        """(the fewest bits off, the entries that close) for a payload read back."""
        mine = np.flatnonzero(self.methods == self._names.index(method.name))
        if not len(mine):
            return method.bits + 1, []
        errors = np.bitwise_count(self.prefixes[mine] ^ np.uint64(int(payload, 16)))
        best = int(errors.min())
        return best, mine[errors == best].tolist()

    def records(self, entries: set[int]) -> dict[int, dict]:
        """RECORD's columns of these entries' rows, read in one pass over the results table."""
        wanted = {int(self.rows[i]): i for i in entries}
        found, offset = {}, 0
        for batch in iter_parquet(self.out, RESULTS, RECORD):
            hits = [r - offset for r in wanted if offset <= r < offset + batch.num_rows]
            if hits:
                chosen = batch.take(pa.array(hits)).to_pylist()
                for r, rec in zip(hits, chosen, strict=True):
                    found[wanted[r + offset]] = {k: rec.get(k) for k in RECORD}
            offset += batch.num_rows
        return found


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
    """Each file identified against `outputs` (folders or object-storage prefixes): every file
    matched against the indexes first, then the matched rows' records read, one pass an output."""
    from pipeline.review.verify import read_anchors

    indexes = [OutputIndex(o) for o in outputs]
    anchors = {ix.out.uri: read_anchors(ix.out, trust_anchors) for ix in indexes}
    found = [_matched(name, indexes, anchors) for name in files]
    records = {id(ix): ix.records({i for r, hits in found for x, i, _ in hits if x is ix}) for ix in indexes}
    return [_described(r, hits, records, anchors) for r, hits in found]


Hit = tuple["OutputIndex", int, int | None]  # (index, entry, bits off: None for a manifest's own item)


def _matched(name: str, indexes: list[OutputIndex], anchors: dict) -> tuple[Identified, list[Hit]]:
    """A file's result so far and the index entries that match it: by its manifest's item, else
    by the closest watermark payload over every size and index (`watermark.matches`)."""
    from pipeline.provenance.readback import verify_bytes

    data = Path(name).read_bytes()
    rgb, mime = _pixels(data)
    mime = mime or mimetypes.guess_type(name)[0] or "application/octet-stream"
    result = Identified(name, "not found")
    if rgb is None:
        return result, []
    checks = {uri: verify_bytes(data, mime, a) for uri, a in anchors.items()}
    result.state = next(iter(checks.values())).state if checks else None
    for ix in indexes:  # 1. its own manifest names the item
        check = checks[ix.out.uri]
        item = (check.generation or {}).get("item_id")
        hits = [(ix, i, None) for i in ix.by_item(item)] if item else []
        if hits:
            result.how, result.state = "manifest", check.state
            result.item_id = item
            return result, hits
    best: tuple[int, list[Hit], tuple[int, int] | None] = (10**9, [], None)  # 2. the watermark names it
    for name_ in sorted(wm.METHODS):
        method = wm.METHODS[name_]
        sizes = set().union(*(ix.sizes.get(name_, set()) for ix in indexes))
        if not sizes:
            continue
        for size, read in wm.decode_at(rgb, method, sizes):
            for ix in indexes:
                errors, entries = ix.nearest(method, read)
                if errors > method.max_bit_errors or not entries:
                    continue
                if errors < best[0]:
                    best = (errors, [(ix, i, errors) for i in entries], size)
                elif errors == best[0]:
                    best[1].extend((ix, i, errors) for i in entries if (ix, i, errors) not in best[1])
            if best[0] == 0:
                break
    if best[1]:
        result.how, result.read_at = "watermark", best[2]
    return result, best[1]


def _described(result: Identified, hits: list[Hit], records: dict, anchors: dict) -> Identified:
    """The result with each hit's record (a manifest's item confirmed whole) and, for a watermark's,
    the original file's validation and how sure the match is."""
    from pipeline.provenance.readback import verify_bytes

    for ix, i, errors in hits:
        record = records[id(ix)].get(i)
        if record is None or (errors is None and record["item_id"] != result.item_id):
            continue  # another item with the same first 64 bits
        if errors is None:
            result.matches.append(Match(ix.out.uri, record))
            continue
        original = ix.out.get(record["path"])
        mime = mimetypes.guess_type(record["path"])[0] or "image/png"
        result.matches.append(Match(ix.out.uri, record, verify_bytes(original, mime, anchors[ix.out.uri]).state,
                                    errors, round(1 - errors / ix.method_of(i).bits, 3)))
    if not result.matches:
        result.how, result.read_at = "not found", None
    result.collision = result.how == "watermark" and len(result.matches) > 1
    return result


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
