"""Model loaders: the only place `from_pretrained` and `open_clip.create_model*` are called.

A model spec is `embedded:<name>` (a tiny model built offline, see `embedded.py`), a local
folder, or a hub id that is already in the local Hugging Face cache: nothing is downloaded
(`local_files_only=True`). Weights load from safetensors only, never with remote code.
Heavy libraries are imported inside the functions, so importing this package is instant.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from pipeline.models import embedded
from pipeline.spec.limits import DTYPES
from pipeline.storage.paths import EMBEDDED_PREFIX, HEAD_PREFIX, model_path


class ModelLoadError(RuntimeError):
    """A model that cannot be loaded; the message names the spec and what was tried."""


@dataclass(frozen=True)
class DiffusionPipelines:
    """One set of weights, three pipelines sharing it (`from_pipe` copies no tensors).

    All three are made eagerly at load time so a broken model fails before any work starts;
    `img2img` / `inpaint` are None when diffusers has no such pipeline for the architecture.
    """

    t2i: Any
    img2img: Any | None
    inpaint: Any | None
    model_id: str
    revision: str | None  # the requested revision; for embedded models the recipe tag
    scheduler_name: str
    vae_scale_factor: int
    max_prompt_tokens: int  # the tokenizer's model_max_length (77 for SD)


@dataclass(frozen=True)
class ClipBundle:
    model: Any  # open_clip CLIP, in eval mode
    preprocess: Any  # PIL image → tensor (the eval transform)
    tokenizer: Any  # list[str] → LongTensor [n, context_length], truncating
    model_id: str


@dataclass(frozen=True)
class ClassifierBundle:
    model: Any  # transformers *ForImageClassification / *ForSequenceClassification, eval mode
    processor: Any  # image processor or tokenizer
    id2label: dict[int, str]
    model_id: str


def resolve_device(spec: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; anything else unchanged."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(spec: str, device: str):
    """'auto' → float16 on CUDA, float32 elsewhere (CPU half precision is slow and lossy)."""
    import torch

    if spec == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if spec not in DTYPES:
        raise ValueError(f"unknown dtype {spec!r} (known: auto, {', '.join(DTYPES)})")
    return getattr(torch, spec)


def _locate(spec: str) -> tuple[str, bool]:
    """(what to hand to from_pretrained, is_embedded) for a model spec."""
    if spec.startswith(EMBEDDED_PREFIX):
        return str(embedded.ensure(spec.removeprefix(EMBEDDED_PREFIX))), True
    path = model_path(spec)
    return (str(path) if path.exists() else spec), False


@contextmanager
def _loading(what: str, spec: str):
    """Re-raise a loader's OSError/ValueError/RuntimeError naming the spec that failed."""
    try:
        yield
    except (OSError, ValueError, RuntimeError) as err:
        raise ModelLoadError(
            f"cannot load {what} {spec!r}: {err}\n(a model is embedded:<name>, a local folder "
            "with safetensors weights, or a hub id already in the local Hugging Face cache; "
            "nothing is downloaded)") from err


@contextmanager
def _hub_offline():
    """open_clip fetches pretrained tags with huggingface_hub and has no `local_files_only`:
    switch the hub to offline mode for the call, so a tag only loads from the local cache."""
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def quiet_libraries() -> None:
    """Batch runs print their own progress: silence the libraries' per-load progress bars."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def optimize(pipes: DiffusionPipelines, *, channels_last: bool = False, compile: bool = False,
             vae_slicing: bool = False, vae_tiling: bool = False) -> None:
    """Throughput options, applied once to the modules all three pipelines share."""
    import torch

    pipe = pipes.t2i
    denoiser = getattr(pipe, "unet", None) or getattr(pipe, "transformer", None)
    if channels_last:
        for module in (denoiser, getattr(pipe, "vae", None)):
            if module is not None:
                module.to(memory_format=torch.channels_last)
    if compile and denoiser is not None:
        denoiser.compile()  # in place: img2img and inpaint share this module
    vae = getattr(pipe, "vae", None)
    if vae_slicing and vae is not None:
        vae.enable_slicing()
    if vae_tiling and vae is not None:
        vae.enable_tiling()


def load_diffusion(model: str, *, revision: str | None, scheduler: str | None, device: str,
                   dtype) -> DiffusionPipelines:
    """Text-to-image, image-to-image and inpainting pipelines over one set of weights."""
    import diffusers
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
    )

    path, is_embedded = _locate(model)
    with _loading("diffusion model", model):
        t2i = AutoPipelineForText2Image.from_pretrained(
            path, dtype=dtype, use_safetensors=True, revision=revision,
            local_files_only=True, trust_remote_code=False)
    if scheduler:
        cls = getattr(diffusers, scheduler, None)
        if not (isinstance(cls, type) and issubclass(cls, diffusers.SchedulerMixin)):
            raise ValueError(f"unknown diffusers scheduler {scheduler!r}")
        t2i.scheduler = cls.from_config(t2i.scheduler.config)
    t2i.to(device)

    def derived(auto):
        try:
            return auto.from_pipe(t2i)
        except ValueError:  # no such pipeline for this architecture
            return None

    img2img, inpaint = derived(AutoPipelineForImage2Image), derived(AutoPipelineForInpainting)
    for pipe in (t2i, img2img, inpaint):
        if pipe is not None:
            pipe.set_progress_bar_config(disable=True)
    tag = embedded.recipe_tag(model.removeprefix(EMBEDDED_PREFIX)) if is_embedded else None
    return DiffusionPipelines(
        t2i=t2i, img2img=img2img, inpaint=inpaint, model_id=model, revision=revision or tag,
        scheduler_name=type(t2i.scheduler).__name__,
        vae_scale_factor=int(t2i.vae_scale_factor),
        max_prompt_tokens=int(t2i.tokenizer.model_max_length),
    )


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
        arch, weights = embedded.CLIP_ARCH, str(folder / embedded.CLIP_WEIGHTS)
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
    with _loading("CLIP model", model), _hub_offline():
        clip, _, preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=weights, device=device, precision=precisions[dtype])
    clip.eval()
    model_id = f"{model}:{pretrained}" if pretrained else model  # as configured: tag or path
    return ClipBundle(model=clip, preprocess=preprocess, tokenizer=open_clip.get_tokenizer(arch),
                      model_id=model_id)


def _load_classifier(auto_model, auto_processor, what: str, model: str,
                     device: str) -> ClassifierBundle:
    path, _ = _locate(model)
    with _loading(what, model):
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
        path = embedded.ensure(model.removeprefix(EMBEDDED_PREFIX)) / embedded.HEAD_WEIGHTS
    else:
        path = model_path(model)
    with _loading("moderation head", model):
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


def load_text_classifier(model: str, *, device: str) -> ClassifierBundle:
    """A text classifier (optional prompt moderation) and its tokenizer."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    return _load_classifier(AutoModelForSequenceClassification, AutoTokenizer,
                            "text classifier", model, device)
