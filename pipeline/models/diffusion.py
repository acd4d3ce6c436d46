"""Diffusion families: one set of weights loaded once, shared by the text-to-image,
image-to-image and inpainting pipelines, and the throughput options applied to it.

The only place a diffusion model's `from_pretrained` is called (safetensors only, local files
only, never remote code). Per-style models belong here too; the IP-Adapter and ControlNet
that condition generation over these weights load in `ip_adapter.py` and `controlnet.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pipeline.models import embedded
from pipeline.models.families import Family, describe
from pipeline.models.loading import loading, locate
from pipeline.storage.paths import EMBEDDED_PREFIX


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
    max_prompt_tokens: int  # the first tokenizer's model_max_length (CLIP's 77 in every family)
    family: Family | None  # modes, guidance, each text encoder's window (families.py); None if unknown


def load_diffusion(model: str, *, revision: str | None, scheduler: str | None, device: str,
                   dtype) -> DiffusionPipelines:
    """Text-to-image, image-to-image and inpainting pipelines over one set of weights."""
    import diffusers
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
    )

    path, is_embedded = locate(model)
    with loading("diffusion model", model):
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
        max_prompt_tokens=int(t2i.tokenizer.model_max_length), family=describe(t2i),
    )


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


def denoiser(pipe):
    """The pipeline's denoising network: its UNet, or its transformer (FLUX, SD3)."""
    return getattr(pipe, "unet", None) or pipe.transformer
