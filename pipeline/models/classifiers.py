"""Moderation's models: an image classifier (e.g. an NSFW ViT), an optional prompt classifier,
or a linear head over CLIP image embeddings, each loaded as a `ClassifierBundle`.

The head shares the scorer's image embedding, so an image is encoded once for both the CLIP
score and moderation; `is_embedding_head` tells the candidate stage which kind a spec names.
Transformers classifiers load from safetensors, local files only, never with remote code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.models import embedded, tiny_judges
from pipeline.models.loading import loading, locate
from pipeline.storage.paths import EMBEDDED_PREFIX, HEAD_PREFIX, model_path


@dataclass(frozen=True)
class ClassifierBundle:
    model: Any  # transformers *ForImageClassification / *ForSequenceClassification, eval mode
    processor: Any  # image processor or tokenizer
    id2label: dict[int, str]
    model_id: str


def _load_classifier(auto_model, auto_processor, what: str, model: str,
                     device: str) -> ClassifierBundle:
    path, _ = locate(model)
    with loading(what, model):
        net = auto_model.from_pretrained(path, use_safetensors=True, local_files_only=True,
                                         trust_remote_code=False)
        processor = auto_processor.from_pretrained(path, local_files_only=True,
                                                   trust_remote_code=False)
    net.to(device).eval()
    id2label = {int(i): str(label) for i, label in net.config.id2label.items()}
    return ClassifierBundle(model=net, processor=processor, id2label=id2label, model_id=model)


def load_image_classifier(model: str, *, device: str) -> ClassifierBundle:
    """An image classifier (e.g. an NSFW ViT) and its image processor."""
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    return _load_classifier(AutoModelForImageClassification, AutoImageProcessor,
                            "image classifier", model, device)


def load_text_classifier(model: str, *, device: str) -> ClassifierBundle:
    """A text classifier (optional prompt moderation) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return _load_classifier(AutoModelForSequenceClassification, AutoTokenizer,
                            "text classifier", model, device)


def is_embedding_head(model: str) -> bool:
    """A moderation spec that reads CLIP image embeddings rather than pixels."""
    return model.startswith(HEAD_PREFIX) or model == "embedded:tiny-clip-head"


def load_embedding_head(model: str, *, device: str) -> ClassifierBundle:
    """A linear head over normalised CLIP image embeddings: `clip-head:/path/head.safetensors`
    holding `weight` [labels, dim] and `bias` [labels], its label names in the file's metadata
    (`{"labels": "[\"normal\", \"nsfw\"]"}`). It shares the scorer's image embedding, so an
    image is encoded once for both the CLIP score and moderation."""
    import json

    import torch
    from safetensors import safe_open

    if model.startswith(EMBEDDED_PREFIX):
        path = embedded.ensure(model.removeprefix(EMBEDDED_PREFIX)) / tiny_judges.HEAD_WEIGHTS
    else:
        path = model_path(model)
    with loading("moderation head", model):
        if path.suffix != ".safetensors":
            raise ValueError("a moderation head must be a .safetensors file")
        with safe_open(str(path), framework="pt") as f:
            labels = json.loads((f.metadata() or {}).get("labels", "[]"))
            weight, bias = f.get_tensor("weight"), f.get_tensor("bias")
        if len(labels) != weight.shape[0]:
            raise ValueError(f"{len(labels)} labels in the metadata for {weight.shape[0]} outputs")
    head = torch.nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        head.weight.copy_(weight)
        head.bias.copy_(bias)
    return ClassifierBundle(head.to(device).eval(), None, dict(enumerate(labels)), model)
