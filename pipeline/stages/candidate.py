"""`CandidateStage` (a GPU actor): prompt check → generate → CLIP score → image moderation →
best-k selection, fused so pixels never cross the object store until an image is kept.
It receives whole manifest rows (all their pending candidates) so it can select.
"""

from __future__ import annotations

import os
import time

import numpy as np
import pyarrow as pa

from pipeline import faults
from pipeline.judge.files import ships_pixels
from pipeline.judge.outcome import fail, reject
from pipeline.judge.review import review_reason
from pipeline.judge.rules import image_reason, moderation, prompt_reason, rejudge
from pipeline.judge.select import has_place, rank
from pipeline.plan.models import ModelRef, ModelUse, job_model
from pipeline.plan.work import PRIOR, unnest
from pipeline.spec import vocabulary
from pipeline.spec.config import JobConfig
from pipeline.stages.contract import (
    CANVAS,
    EMBEDDING,
    PIXELS,
    STAGE_OUT_SCHEMA,
    die_if_armed,
    ms_each,
    worker_name,
)
from pipeline.stages.overlay import drawn


class CandidateStage:
    """Everything that needs the models, on the actor that holds them."""

    def __init__(self, cfg: JobConfig, models: dict[ModelRef, ModelUse] | None = None):
        """`models`: the diffusion models this actor holds, each with what its units need (the
        styles that use it; whether any has a style or structure image). Default: the job's model.
        Each is loaded here, so one that cannot load stops the run before any work, named with its
        styles; past `[cluster].models_per_actor` the least recently used is dropped again (and
        loaded again when its units come)."""
        from pipeline.models import classifiers, clip, loading
        from pipeline.models.held import HeldModels
        from pipeline.stages.generator_setup import load_generator
        from pipeline.stages.moderate import EmbeddingModerator, ImageModerator, PromptModerator
        from pipeline.stages.score import ClipScorer

        loading.quiet_libraries()
        m = cfg.models
        device = loading.resolve_device(m.device)
        dtype = loading.resolve_dtype(m.dtype, device)
        self.cpu_threads = (cfg.cluster.torch_threads or os.cpu_count() or 1) if device == "cpu" else 0
        self.cfg = cfg
        self.used_by = models or {job_model(cfg): ModelUse()}
        def load(ref: ModelRef):
            return load_generator(cfg, ref, self.used_by.get(ref, ModelUse()), device, dtype)

        self.generators = HeldModels(load, capacity=cfg.cluster.models_per_actor)
        for ref in reversed(list(self.used_by)):  # the first model's units come first: it stays loaded
            self.generators.get(ref)
        self.scorer = ClipScorer(clip.load_clip(m.clip, m.clip_pretrained, device=device))
        self.shared_embedding = classifiers.is_embedding_head(m.moderation)
        if self.shared_embedding:
            self.image_moderator = EmbeddingModerator(
                classifiers.load_embedding_head(m.moderation, device=device), m.unsafe_labels)
            clip_dim = self.scorer.embed_images([np.zeros((8, 8, 3), np.uint8)]).shape[1]
            if clip_dim != self.image_moderator.embed_dim:
                raise ValueError(f"[models].moderation {m.moderation!r} reads {self.image_moderator.embed_dim}-d "
                                 f"embeddings but [models].clip {m.clip!r} makes {clip_dim}-d ones")
        else:
            self.image_moderator = ImageModerator(
                classifiers.load_image_classifier(m.moderation, device=device), m.unsafe_labels)
        self.moderation_model = m.moderation
        text_clf = (classifiers.load_text_classifier(m.prompt_classifier, device=device)
                    if m.prompt_classifier else None)
        self.prompt_moderator = PromptModerator(cfg.filter.blocked_terms, text_clf, m.unsafe_labels)
        self.worker = worker_name()
        self._references: dict[str, np.ndarray] = {}
        from pipeline.storage.store import Output

        self.out = Output(cfg.job.output)  # where a refinement's parent image is

    def __call__(self, batch: pa.Table) -> pa.Table:
        """Work records (manifest rows with nested candidates) → one record per candidate, its
        pixels attached when the writer may need them."""
        # 1. check inputs: work records are whole manifest rows, so selection sees every candidate
        if self.cpu_threads:
            # OpenMP's thread count is per calling thread, and an executor may call us from a
            # thread other than the constructor's: set it here, where the work runs.
            import torch

            torch.set_num_threads(self.cpu_threads)
        records = unnest(batch).to_pylist()
        die_if_armed(records)
        # 2. earlier judged candidates under today's rules, from their stored scores; one whose
        # prompt was blocked and is not now is generated as a new candidate
        for r in records:
            if r[PRIOR]:
                r[PRIOR] = rejudge(r, self.prompt_moderator.match(r["prompt"]), self.cfg.filter)
        new = [r for r in records if not r[PRIOR]]
        for r in new:
            r.update(job=self.cfg.job.name, worker=self.worker)
            if reason := review_reason(r):  # a reviewer took it out (its file is gone): not made again
                reject(r, reason)
        # prompt moderation: blocked prompts are never generated
        self._moderate_prompts([r for r in new if r["status"] is None])
        # 3. generate
        images = self._generate([r for r in new if r["status"] is None])
        # 4. score and moderate images, then rank every passed candidate of each row
        self._score_and_moderate([r for r in new if r["item_id"] in images], images)
        ranks = rank(records)  # the writer ranks again (the same numbers) and fills the places
        # 5. an earlier candidate promoted into a place has no file yet: make it again (its
        # seed gives the same pixels; its stored scores stand). One that fails drops out of the
        # ranking and the next moves up, until the places are filled or no candidate is left.
        tried: set[str] = set()
        while wanted := [r for r in records if r[PRIOR] and r["path"] is None and r["item_id"] not in tried
                         and has_place(r, ranks)]:
            tried.update(r["item_id"] for r in wanted)
            images.update(self._generate(wanted))
            ranks = rank(records)
        # 6. collect pixels for the picks and a reserve of runners-up (a failed write hands its
        # place on), every image when rejected ones are kept too, every viewable one for previews
        for r in records:
            img = images.get(r["item_id"]) if ships_pixels(r, ranks, self.cfg.output.write_rejected,
                                                            self.cfg.output.previews) else None
            r[PIXELS] = img.tobytes() if img is not None else None
        return pa.Table.from_pylist(records, schema=STAGE_OUT_SCHEMA)

    def _generate(self, todo: list[dict]) -> dict[str, np.ndarray]:
        """Generate `todo`; failures become error records. Item id → pixels of the others."""
        images: dict[str, np.ndarray] = {}
        todo = [r for r in todo if self._with_parent_image(r)]
        by_model: dict[ModelRef, list[dict]] = {}
        for r in todo:  # a unit holds one model (plan/work.py); grouped all the same
            by_model.setdefault(ModelRef(r["model"], r["model_revision"]), []).append(r)
        for ref, records in by_model.items():
            self._generate_with(self.generators.get(ref), records, images)
        return images

    def _generate_with(self, generator, todo: list[dict], images: dict[str, np.ndarray]) -> None:
        for r, g in zip(todo, generator(todo), strict=True):
            # every attempt's model time, a failed candidate's too (it is paid for)
            r.update(ms_generate=g.ms, batch_size=g.batch_size, worker=self.worker,
                     batch_position=g.batch_position, attempt=g.attempt, truncated=g.truncated,
                     truncated_by=g.truncated_by)
            if g.error:  # "generate: <what failed>"
                r.update(status=vocabulary.ERROR, reason=g.error, reason_code=vocabulary.GENERATE_ERROR)
            else:
                r["scheduler"] = generator.pipes.scheduler_name  # the class that ran, whatever was configured
                images[r["item_id"]] = g.image

    def _with_parent_image(self, r: dict) -> bool:
        """A refinement starts from its parent's image, read from the output (`canvas`); False,
        and the record is an error that says why, when that image cannot be read."""
        if r["parent"] is None:
            return True
        from pipeline.storage.layout import source_path

        rel = source_path(r["parent"], r["format"], drawn(r))
        try:
            r[CANVAS] = self.out.get(rel)
            return True
        except Exception as e:  # noqa: BLE001 — failures are rows
            fail(r, vocabulary.REFINE_ERROR, f"the image it refines ({rel}) cannot be read: {type(e).__name__}: {e}")
            return False

    def _moderate_prompts(self, records: list[dict]) -> None:
        bad_seed = faults.arg("prompt.error")
        if bad_seed and any(str(r["seed"]) == bad_seed for r in records):
            raise RuntimeError(f"injected prompt-check failure for seed {bad_seed}")
        t0 = time.perf_counter()
        # The resolved prompt: the row's words and the style template around them.
        verdicts = self.prompt_moderator([r["prompt"] for r in records])
        ms = ms_each(t0, len(records))
        threshold = self.cfg.filter.prompt_unsafe_threshold
        for r, v in zip(records, verdicts, strict=True):
            r["prompt_unsafe_score"] = v.score
            r["ms_moderate"] = ms
            reason = prompt_reason(v.term, v.score, threshold)
            if reason is not None:
                reject(r, reason)
            r["moderation"] = moderation(reason)

    def _score_and_moderate(self, made: list[dict], images: dict[str, np.ndarray]) -> None:
        if not made:
            return
        try:
            measured = self._measure(made, images)
        except Exception:  # noqa: BLE001 — find the candidate that fails, keep the others
            measured = []
            for r in made:
                try:
                    measured += self._measure([r], images)
                except Exception as e:  # noqa: BLE001
                    fail(r, vocabulary.SCORE_ERROR, f"{type(e).__name__}: {e}")
        threshold = self.cfg.filter.image_unsafe_threshold
        for r, s, u, e, ms_score, ms_mod in measured:
            r.update(clip_score=float(s), clip_model=self.scorer.model_id, image_unsafe_score=float(u),
                     moderation_model=self.moderation_model, **{EMBEDDING: e},
                     reference_similarity=self._reference_similarity(r["style_reference"], e),
                     style_image_similarity=self._reference_similarity(r["style_image"], e),
                     ms_score=ms_score, ms_moderate=(r["ms_moderate"] or 0) + ms_mod)
            if reason := image_reason(float(s), float(u), r["clip_threshold"], threshold):
                reject(r, reason, moderation=moderation(reason))

    def _reference_similarity(self, uri: str | None, embedding: list[float]) -> float | None:
        """Cosine of an image's CLIP embedding with one of its style's images' (the reference image,
        the style image: embedded once per actor and image)."""
        if uri is None:
            return None
        if uri not in self._references:
            from pipeline.storage.uris import load_image

            image = np.asarray(load_image(uri, "RGB"))  # upright, as product photos are
            self._references[uri] = self.scorer.embed_images([image])[0].cpu().numpy().astype(np.float64)
        return float(np.dot(self._references[uri], np.asarray(embedding, np.float64)))

    def _measure(self, made: list[dict], images: dict[str, np.ndarray]) -> list[tuple]:
        """(record, CLIP score vs the row's prompt, unsafe score, image embedding, ms each) for
        every candidate. The embedding is kept, so later figures and re-judging need no pixels."""
        bad_seed = faults.arg("score.error")
        if bad_seed and any(str(r["seed"]) == bad_seed for r in made):
            raise RuntimeError(f"injected scoring failure for seed {bad_seed}")
        pixels = [images[r["item_id"]] for r in made]
        texts = [r["source_prompt"] for r in made]
        t0 = time.perf_counter()
        embeddings = self.scorer.embed_images(pixels)
        scores = self.scorer.score(embeddings, texts)
        ms_score = ms_each(t0, len(made))
        t0 = time.perf_counter()
        # one vision pass feeds the score and an embedding moderation head
        unsafe = self.image_moderator(embeddings if self.shared_embedding else pixels)
        ms_mod = ms_each(t0, len(made))
        vectors = embeddings.cpu().numpy().tolist()
        return [(r, s, u, e, ms_score, ms_mod) for r, s, u, e in zip(made, scores, unsafe, vectors, strict=True)]
