"""Prompt and image moderation: raw scores and matches, no thresholds.

These classes measure; the caller decides (thresholds live in `[filter]` of the job spec), so
the results table keeps every score and a threshold can be changed without rerunning models.
"""

from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from pipeline.models.classifiers import ClassifierBundle


def _unsafe_indices(id2label: dict[int, str], unsafe_labels: tuple[str, ...]) -> list[int]:
    """Class indices of `unsafe_labels` (case-insensitive); every one must exist."""
    by_name = {label.lower(): i for i, label in id2label.items()}
    missing = [u for u in unsafe_labels if u.lower() not in by_name]
    if not unsafe_labels or missing:
        raise ValueError(
            f"unsafe label(s) {missing or list(unsafe_labels)} not among the model's labels "
            f"{sorted(id2label.values())}")
    return sorted({by_name[u.lower()] for u in unsafe_labels})


def _unsafe_probability(model, inputs: dict, indices: list[int]) -> np.ndarray:
    """Sum of the softmax probabilities of the unsafe classes, float64."""
    device = next(model.parameters()).device
    logits = model(**{k: v.to(device) for k, v in inputs.items()}).logits
    return logits.float().softmax(dim=-1)[:, indices].sum(dim=-1).double().cpu().numpy()


class ImageModerator:
    """Unsafe probability of each image from an image classifier (e.g. an NSFW ViT)."""

    def __init__(self, bundle: ClassifierBundle, unsafe_labels: tuple[str, ...],
                 batch_size: int = 32):
        self.model, self.processor = bundle.model, bundle.processor
        self.model_id = bundle.model_id
        self.indices = _unsafe_indices(bundle.id2label, tuple(unsafe_labels))
        self.batch_size = batch_size

    def __call__(self, images: list[np.ndarray]) -> np.ndarray:
        import torch
        from PIL import Image

        scores = np.zeros(len(images), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = [Image.fromarray(im).convert("RGB")
                         for im in images[start:start + self.batch_size]]
                inputs = self.processor(images=batch, return_tensors="pt")
                scores[start:start + len(batch)] = _unsafe_probability(
                    self.model, inputs, self.indices)
        return scores


class EmbeddingModerator:
    """Unsafe probability from a linear head over CLIP image embeddings (shared with the
    CLIP score: no second vision model, no second pass over the pixels)."""

    def __init__(self, bundle: ClassifierBundle, unsafe_labels: tuple[str, ...]):
        self.head, self.model_id = bundle.model, bundle.model_id
        self.indices = _unsafe_indices(bundle.id2label, tuple(unsafe_labels))
        self.embed_dim = self.head.in_features

    def __call__(self, image_emb) -> np.ndarray:
        import torch

        with torch.inference_mode():
            logits = self.head(image_emb.to(self.head.weight.device, self.head.weight.dtype))
            return logits.float().softmax(dim=-1)[:, self.indices].sum(dim=-1).double().cpu().numpy()


@dataclass(frozen=True)
class PromptVerdict:
    blocked: bool  # a blocked term matched
    term: str | None  # the first blocked term found, as configured
    score: float | None  # classifier's unsafe probability; None without a classifier


def normalize_text(text: str) -> str:
    """NFKC + casefold, format characters (zero-width spaces, soft hyphens) removed.

    NFKC folds full-width and compatibility forms ('ｎｓｆｗ' → 'nsfw'); dropping category Cf
    defeats 'ns\\u200bfw'. Used on both the prompt and the blocked terms.
    """
    text = unicodedata.normalize("NFKC", text)
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return text.casefold()


def _term_key(term: str) -> str:
    return " ".join(normalize_text(term).split())


def _term_pattern(keys: list[str]) -> re.Pattern[str] | None:
    """One regex matching any term as whole words (any whitespace between a term's words)."""
    parts = [r"(?<!\w)" + r"\s+".join(map(re.escape, key.split())) + r"(?!\w)"
             for key in sorted(set(keys), key=len, reverse=True)]  # longest first
    return re.compile("|".join(parts)) if parts else None


class PromptModerator:
    """Blocked-term matches and, optionally, a text classifier's unsafe probability.

    Terms match on word boundaries, so 'ass' does not match 'classic'. Scripts written without
    spaces (Japanese, Chinese) need the term to stand alone; substring matching there would
    need a word segmenter.
    """

    def __init__(self, blocked_terms: tuple[str, ...], classifier: ClassifierBundle | None = None,
                 unsafe_labels: tuple[str, ...] = ("nsfw",), batch_size: int = 32):
        self.original = {_term_key(t): t for t in blocked_terms if _term_key(t)}
        self.pattern = _term_pattern(list(self.original))
        self.classifier = classifier
        self.indices = (_unsafe_indices(classifier.id2label, tuple(unsafe_labels))
                        if classifier is not None else [])
        self.batch_size = batch_size

    def __call__(self, prompts: list[str]) -> list[PromptVerdict]:
        terms = [self.match(p) for p in prompts]
        scores = self._scores(prompts)
        return [PromptVerdict(blocked=t is not None, term=t, score=s)
                for t, s in zip(terms, scores, strict=True)]

    def match(self, prompt: str) -> str | None:
        """The blocked term the prompt contains, or None (no model: cheap enough to redo)."""
        if self.pattern is None:
            return None
        found = self.pattern.search(normalize_text(prompt))
        if found is None:
            return None
        return self.original[" ".join(found.group(0).split())]

    def _scores(self, prompts: list[str]) -> list[float | None]:
        if self.classifier is None:
            return [None] * len(prompts)
        import torch

        out: list[float | None] = []
        with torch.inference_mode():
            for start in range(0, len(prompts), self.batch_size):
                inputs = self.classifier.processor(
                    list(prompts[start:start + self.batch_size]), padding=True, truncation=True,
                    return_tensors="pt")
                out.extend(_unsafe_probability(self.classifier.model, dict(inputs),
                                               self.indices).tolist())
        return out
