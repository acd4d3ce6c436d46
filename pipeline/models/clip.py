"""CLIP: the open_clip model that scores prompt–image agreement (and, through an embedding head,
feeds moderation), with its image transform and tokenizer.

The only place `open_clip.create_model*` is called. Weights come from the embedded tiny CLIP,
a local `.safetensors` file, or a pretrained tag already in the local Hugging Face cache.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from pipeline.errors import ModelLoadError
from pipeline.models import embedded, tiny_judges
from pipeline.models.loading import hub_offline, loading
from pipeline.storage.paths import EMBEDDED_PREFIX


@dataclass(frozen=True)
class ClipBundle:
    model: Any  # open_clip CLIP, in eval mode
    preprocess: Any  # PIL image → tensor (the eval transform)
    tokenizer: Any  # list[str] → LongTensor [n, context_length], truncating
    model_id: str


def load_clip(model: str, pretrained: str | None = None, *, device: str,
              dtype=None) -> ClipBundle:
    """An open_clip model: an architecture name ('ViT-L-14') plus a weights file or tag.

    `embedded:tiny-clip` registers the embedded config with open_clip and loads its
    safetensors file through the same `create_model_and_transforms` call. `local-dir:` and
    `hf-hub:` names are passed through to open_clip (they ignore `pretrained`). A local
    weights file must be `.safetensors`. `dtype` None / float32 keeps fp32 weights.
    """
    import open_clip
    import torch

    arch, weights = model, pretrained
    if model.startswith(EMBEDDED_PREFIX):
        if model != f"{EMBEDDED_PREFIX}tiny-clip":
            raise ValueError(f"unknown embedded CLIP model {model!r} (known: embedded:tiny-clip)")
        folder = embedded.ensure("tiny-clip")
        arch, weights = tiny_judges.CLIP_ARCH, str(folder / tiny_judges.CLIP_WEIGHTS)
        if arch not in open_clip.list_models():
            open_clip.add_model_config(folder / f"{arch}.json")
    elif weights and os.path.isfile(os.path.expanduser(weights)):
        weights = os.path.expanduser(weights)
        if not weights.endswith(".safetensors"):
            raise ModelLoadError(f"CLIP weights {weights!r}: only .safetensors files are loaded")
    precisions = {None: "fp32", torch.float32: "fp32", torch.float16: "fp16",
                  torch.bfloat16: "bf16"}
    if dtype not in precisions:
        raise ValueError(f"unsupported CLIP dtype {dtype}")
    with loading("CLIP model", model), hub_offline():
        clip, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights, device=device, precision=precisions[dtype])
    clip.eval()
    model_id = f"{model}:{pretrained}" if pretrained else model  # as configured: tag or path
    return ClipBundle(model=clip, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch),
                      model_id=model_id)
