"""`WriteStage` (CPU actors, in parallel): encode → sign (C2PA, the last write) → atomic write →
read back and verify → sha256. Only kept images reach it.
"""

from __future__ import annotations

import hashlib
import mimetypes
import os
import time
from datetime import UTC, datetime

import numpy as np
import pyarrow as pa

from pipeline import faults
from pipeline.errors import show
from pipeline.judge.files import keeps_file, written_for_review
from pipeline.judge.outcome import fail
from pipeline.judge.select import fill_places
from pipeline.plan.work import PRIOR
from pipeline.provenance.watermark import lost as watermark_lost
from pipeline.spec import vocabulary
from pipeline.spec.channel_formats import delivered_size
from pipeline.spec.config import JobConfig
from pipeline.stages.contract import (
    JUDGED_WITH,
    PIXELS,
    SOFTWARE_AGENT,
    WRITTEN_SCHEMA,
    die_if_armed,
    worker_name,
)
from pipeline.stages.overlay import drawn
from pipeline.stages.preview import write_preview


def _verdict(r: dict) -> tuple:
    """What a (re-)judging may change about a candidate, and the rules it was judged under."""
    return r["status"], r["reason"], r["selected"], r["rank"], r["path"], r[JUDGED_WITH]


def _forget_file(r: dict) -> None:
    """No file for this candidate: nothing of a file is recorded."""
    r.update(path=None, sha256=None, bytes=None, c2pa_label=None, c2pa_state=None, clean_path=None, clean_sha256=None)


class WriteStage:
    """Encode, sign, write atomically, read back and verify: the last touch of each image.
    `run_id`: the run this writer works for; before each image goes into an output on object
    storage, the output's lock must still name that run (`lock.confirm_holder`), else the image
    is an `error` row and nothing is written."""

    def __init__(self, cfg: JobConfig, output_dir: str, run_id: str | None = None):
        from pipeline.provenance.signer import Signer
        from pipeline.storage.store import Output

        self.cfg, self.run_id = cfg, run_id
        self.out = Output(output_dir)  # a folder, or a prefix on object storage
        self.signer = Signer.from_section(cfg.signer, self.out, quiet=True)
        self.writer = worker_name()
        self._parents: dict[str, tuple[bytes, str]] = {}

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Candidate records with pixels → outcomes: the best of each row written in rank order
        (a failed write hands its place on), the rest rejected. Earlier judged candidates come
        back only when their outcome changed (a pick outranked, a runner-up promoted)."""
        # 1. check inputs: whole rows of candidates, the pixels of those the writer may need
        records = batch.to_pylist()
        die_if_armed([], "writer.exit_once")
        before = {r["item_id"]: _verdict(r) for r in records if r[PRIOR]}
        pixels = {r["item_id"]: r.pop(PIXELS) for r in records}
        # 2. judge: fill each row's places in rank order, writing each pick as it gets one
        for r in records:
            r[JUDGED_WITH] = r["judge_key"]  # the rules this judging applied
        fill_places(records, lambda r: self._write_or_error(r, pixels[r["item_id"]]),
                    can_write=lambda r: pixels[r["item_id"]] is not None)
        # 3. the files around the places: rejected images written for review, the rest forgotten;
        # a preview of each judged candidate (stages/preview.py)
        write_rejected = self.cfg.output.write_rejected
        for r in records:
            kept = r["status"] == vocabulary.WRITTEN
            if not kept and written_for_review(r, write_rejected) and pixels[r["item_id"]] is not None:
                kept = self._write_or_error(r, pixels[r["item_id"]])
            if not kept and not keeps_file(r, write_rejected):
                _forget_file(r)
            write_preview(self.out, r, pixels[r["item_id"]], self.cfg.output.previews)  # every judged candidate's
        # 4. the outcomes that changed, stamped
        now = datetime.now(UTC)
        changed = [r for r in records if r["item_id"] not in before or _verdict(r) != before[r["item_id"]]]
        for r in changed:
            r["finished_at"] = now
        return pa.Table.from_pylist(changed, schema=WRITTEN_SCHEMA)

    def _write_or_error(self, r: dict, pixels: bytes) -> bool:
        """Write one image; False (and the record says why) when it does not verify or fails."""
        r["writer"] = self.writer
        try:
            if self._write(r, pixels):
                return True
        except Exception as e:  # noqa: BLE001 — failures are rows
            fail(r, vocabulary.WRITE_ERROR, f"{type(e).__name__}: {e}")
        _forget_file(r)
        return False

    def _parent(self, uri: str | None) -> tuple[bytes | None, str | None]:
        if uri is None:
            return None, None
        if uri not in self._parents:
            from pipeline.storage.uris import read_bytes

            self._parents[uri] = (read_bytes(uri), mimetypes.guess_type(uri)[0] or "image/png")
            if len(self._parents) > 64:
                self._parents.pop(next(iter(self._parents)))
        return self._parents[uri]

    def _inputs(self, r: dict) -> tuple:
        """The style and structure images that steered a candidate, for its `inputTo` ingredients."""
        from pipeline.provenance.claim import Input

        return tuple(Input(column, *self._parent(r[column]), os.path.basename(r[column]))
                     for column in ("style_image", "structure_image") if r[column] is not None)

    def _overlay(self, r: dict):
        """The brand overlay of a candidate (stages/overlay.py), or None where its style draws none."""
        if not drawn(r):
            return None
        from pipeline.stages.overlay import Overlay

        color = r["headline_color"] or "#FFFFFF"
        return Overlay(logo=self._parent(r["logo"])[0], logo_position=r["logo_position"] or "bottom-right",
                       logo_size=r["logo_size"] or 0.15, headline=r["headline"],
                       font=self._parent(r["headline_font"])[0],
                       color=tuple(int(color[i:i + 2], 16) for i in (1, 3, 5)),
                       headline_position=r["headline_position"] or "top")

    def _overlay_claim(self, r: dict):
        """What the manifest says of the overlay: the logo (a `componentOf` ingredient), the exact headline."""
        from pipeline.provenance.claim import Input, Overlaid

        if not drawn(r):
            return None
        logo = Input("logo", *self._parent(r["logo"]), os.path.basename(r["logo"])) if r.get("logo") else None
        font = os.path.basename(r["headline_font"]) if r.get("headline_font") else None
        return Overlaid(logo=logo, headline=r.get("headline"), font=font)

    @staticmethod
    def _watermark(r: dict):
        """(the method, the claim's Watermarked) of a candidate the job watermarks, else (None, None)."""
        if not r.get("watermark"):
            return None, None
        from pipeline.provenance.claim import Watermarked
        from pipeline.provenance.watermark import METHODS, payload_for

        method = METHODS[r["watermark"]]
        return method, Watermarked(method.alg, payload_for(r["item_id"], method))

    @staticmethod
    def _failed_check(data: bytes, check, method, mark) -> str | None:
        """Why a file read back is not what was signed: its C2PA state, else a watermark that
        does not read as its soft binding says; None when it verifies."""
        if not check.ok:
            return f"C2PA {check.state}: {', '.join(check.errors)}"
        return watermark_lost(data, method, mark.payload) if mark is not None else None

    def _made_from(self, r: dict) -> tuple[bytes | None, str | None, str | None]:
        """The image a candidate was made from, for its C2PA `parentOf` ingredient (bytes, type,
        title): a child's source (a refinement's earlier image, a format's image; the clean one
        beside an overlaid image), signed, so the chain of review rounds is provable; else the
        product or reference photo; none for text-to-image."""
        from pipeline.storage.layout import source_path

        if r["parent"]:
            rel = source_path(r["parent"], r["format"], drawn(r))
            return self.out.get(rel), mimetypes.guess_type(rel)[0] or "image/png", os.path.basename(rel)
        if r["mode"] == vocabulary.T2I:
            return None, None, None
        return *self._parent(r["init_image"]), os.path.basename(r["init_image"])

    def _write(self, r: dict, pixels: bytes) -> bool:
        """True when the signed file is in place and verifies; else the row says why. Where a
        brand overlay is drawn, the image as generated is signed and kept first (`clean_path`,
        with `[overlay].keep_clean`), and the overlaid image names it as its parent."""
        import dataclasses

        from pipeline.provenance.claim import Claim
        from pipeline.storage.layout import clean_path, image_path
        from pipeline.storage.write import encode_image, sha256_hex

        o = self.cfg.output
        if faults.arg("write.error") == str(r["seed"]):
            raise OSError(f"injected write failure for seed {r['seed']}")
        t0 = time.perf_counter()
        width, height = delivered_size(r["width"], r["height"], r.get("variant"))
        img = np.frombuffer(pixels, dtype=np.uint8).reshape(height, width, 3)
        overlay = self._overlay(r)
        drawn_img = None
        if overlay is not None:  # judged as generated; the brand's logo and headline drawn now
            from PIL import Image

            from pipeline.stages.overlay import HeadlineDoesNotFit, render

            try:
                drawn_img = np.asarray(render(Image.fromarray(img), overlay))
            except HeadlineDoesNotFit as e:
                fail(r, vocabulary.OVERLAY_ERROR, f"column 'headline' {show(r['headline'])}: {e}")
                return False

        method, mark = self._watermark(r)  # over the finished pixels, clean and overlaid alike

        def encoded(pixels_):
            if mark is not None:
                from pipeline.provenance.watermark import embed

                pixels_ = embed(pixels_, method, mark.payload)
            return encode_image(pixels_, o.format, png_compress_level=o.png_compress_level,
                                jpeg_quality=o.jpeg_quality, webp_quality=o.webp_quality)

        parent, parent_mime, parent_title = self._made_from(r)
        r["path"] = image_path(r["item_id"], r["format"])
        claim = Claim(
            title=os.path.basename(r["path"]), model=r["model"], model_revision=r["model_revision"],
            seed=int(r["seed"]), steps=int(r["steps"]), guidance_scale=float(r["guidance_scale"]),
            prompt_sha256=hashlib.sha256(r["prompt"].encode("utf-8")).hexdigest(), mode=r["mode"],
            item_id=r["item_id"], software_agent=SOFTWARE_AGENT, parent=parent, parent_mime=parent_mime,
            parent_title=parent_title, inputs=self._inputs(r), watermark=mark)
        data, mime = encoded(img if drawn_img is None else drawn_img)
        t1 = time.perf_counter()
        spent = {"ms_write": 0.0, "ms_verify": 0.0}
        if drawn_img is not None and self.cfg.overlay.keep_clean:
            clean_rel = clean_path(r["item_id"], r["format"])
            clean_data, _ = encoded(img)
            clean, check = self._put(clean_rel, self.signer.sign(clean_data, mime, dataclasses.replace(
                claim, title=os.path.basename(clean_rel))), mime, spent)
            if why := self._failed_check(clean, check, method, mark):
                fail(r, vocabulary.VERIFY_ERROR, f"the clean image: {why}")
                return False
            r.update(clean_path=clean_rel, clean_sha256=sha256_hex(clean))
            claim = dataclasses.replace(claim, parent=clean, parent_mime=mime, parent_title=os.path.basename(clean_rel),
                                        inputs=(), overlay=dataclasses.replace(self._overlay_claim(r), over_clean=True))
        elif drawn_img is not None:
            claim = dataclasses.replace(claim, overlay=self._overlay_claim(r))
        signed = self.signer.sign(data, mime, claim)
        t2 = time.perf_counter()
        on_disk, check = self._put(r["path"], signed, mime, spent)
        r.update(ms_encode=(t1 - t0) * 1000, ms_sign=(t2 - t1) * 1000, **spent, c2pa_label=check.label,
                 c2pa_state=check.state, bytes=len(on_disk), sha256=sha256_hex(on_disk))
        if why := self._failed_check(on_disk, check, method, mark):
            self.out.delete(r["path"])
            fail(r, vocabulary.VERIFY_ERROR, why)
            return False
        return True

    def _put(self, rel: str, signed: bytes, mime: str, spent: dict[str, float]):
        """Put a signed image at `rel`, read it back and verify it: (the bytes there, the check);
        the milliseconds each took are added to `spent` (`ms_write`, `ms_verify`).

        Created only where nothing is (whole or absent: temp + link locally, one conditional PUT on
        a bucket). A file already at this item's path is this item's image when it verifies: a
        killed run's, or, on a bucket, the run that took the output over while this one was paused
        between its lock check and its write. It is kept, never overwritten; only one that does not
        verify is replaced."""
        if self.run_id is not None:
            from pipeline.storage.lock import confirm_holder

            confirm_holder(self.out, self.run_id)  # LockLost: an error row, nothing written
        t0 = time.perf_counter()
        created = self.out.create(rel, signed)
        t1 = time.perf_counter()
        on_disk = self.out.get(rel)
        check = self.signer.verify(on_disk, mime)
        if not created and not check.ok:
            self.out.put(rel, signed)
            on_disk = self.out.get(rel)
            check = self.signer.verify(on_disk, mime)
        spent["ms_write"] += (t1 - t0) * 1000
        spent["ms_verify"] += (time.perf_counter() - t1) * 1000  # a replaced file's second write included
        return on_disk, check
