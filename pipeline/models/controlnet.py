"""A ControlNet over a loaded diffusion model: a structure image steering generation. A folder
may hold one per base; the loader picks the one of the class and widths that fit the loaded
denoiser (UNet, FLUX or SD3 transformer) and loads it through diffusers' own `from_pretrained`,
local files only.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from pipeline.models.diffusion import DiffusionPipelines, denoiser
from pipeline.models.families import SD3
from pipeline.models.loading import adapter_folder, loading

# The ControlNet class that steers each denoiser (config `_class_name`s).
CONTROLNET_CLASSES = {"UNet2DConditionModel": "ControlNetModel", "FluxTransformer2DModel": "FluxControlNetModel",
                      "SD3Transformer2DModel": "SD3ControlNetModel"}
# What a ControlNet shares with its base, by class: the UNet one mirrors the base's encoder;
# a transformer one adds its block outputs to the base's hidden states (same widths).
_SHARED = {"ControlNetModel": ("cross_attention_dim", "addition_embed_type", "in_channels", "block_out_channels"),
           "FluxControlNetModel": ("in_channels", "joint_attention_dim", "pooled_projection_dim",
                                   "attention_head_dim", "num_attention_heads"),
           "SD3ControlNetModel": ("in_channels", "patch_size", "joint_attention_dim", "caption_projection_dim",
                                  "pooled_projection_dim", "attention_head_dim", "num_attention_heads")}


def _fits_controlnet(config: dict, net) -> bool:
    """A ControlNet of the class for this denoiser, with the widths it shares with it."""
    cls = CONTROLNET_CLASSES.get(type(net).__name__)
    return config.get("_class_name") == cls and all(
        _plain(config.get(k)) == _plain(net.config.get(k)) for k in _SHARED[cls])


def _plain(value):
    return list(value) if isinstance(value, (list, tuple)) else value


def _controlnet_folder(folder: Path, net) -> Path:
    """`folder` itself when it holds one ControlNet, else its one subfolder that fits the denoiser."""
    import json

    def config(f: Path) -> dict | None:
        c = json.loads((f / "config.json").read_text()) if (f / "config.json").is_file() else None
        return c if c and c.get("_class_name") in _SHARED else None

    if (root := config(folder)) is not None:
        if not _fits_controlnet(root, net):
            raise ValueError(f"the ControlNet in {folder} ({root['_class_name']}) is for another base model "
                             f"than this {type(net).__name__}")
        return folder
    fits = sorted(f for f in folder.iterdir() if f.is_dir() and (c := config(f)) and _fits_controlnet(c, net))
    if len(fits) != 1:
        found = "none" if not fits else ", ".join(f.name for f in fits)
        raise ValueError(f"{folder} should hold one ControlNet for this model, found {found}")
    return fits[0]


# Families whose ControlNet pipelines (diffusers 0.42) encode the control image with
# `latent_dist.sample()` from the global RNG, not the call's generators: pixels that differ from
# run to run, and a candidate's noise that depends on its batch mates.
SAMPLES_CONTROL_UNSEEDED = (SD3,)


def _posterior_mean(vae):
    """The same VAE (a shallow copy: its modules and weights are shared, nothing is copied) whose
    `encode` gives the posterior's mean where a sample is asked for: the control image's latents
    then depend on the image alone. (The real VAEs' posteriors are narrow: the mean is what a
    sample is, up to noise.)"""
    import copy

    view = copy.copy(vae)

    def encode(x, return_dict: bool = True):
        out = type(vae).encode(vae, x, return_dict=return_dict)
        dist = out.latent_dist if return_dict else out[0]
        dist.sample = lambda generator=None: dist.mode()
        return out

    view.encode = encode
    return view


def load_controlnet(pipes: DiffusionPipelines, spec: str) -> DiffusionPipelines:
    """ControlNet pipelines over the model's own modules (`from_pipe` copies no tensors) and one
    ControlNet, fitted to the model, for each mode the family steers by a structure image
    (`families.STEERING`; None for the others). Their `image` / `control_image` is the
    structure image (an edge map: `stages/structure.py`); `controlnet_conditioning_scale` says
    how strongly it steers."""
    import diffusers
    from diffusers import AutoPipelineForImage2Image, AutoPipelineForInpainting, AutoPipelineForText2Image

    from pipeline.models.families import STRUCTURE_IMAGE, steering_modes
    from pipeline.spec.vocabulary import IMG2IMG, INPAINT

    t2i, base = pipes.t2i, denoiser(pipes.t2i)
    with loading("ControlNet", spec):
        folder = _controlnet_folder(adapter_folder(spec), base)
        cls = getattr(diffusers, CONTROLNET_CLASSES[type(base).__name__])
        net = cls.from_pretrained(folder, dtype=base.dtype, use_safetensors=True, local_files_only=True)
    net.to(t2i.device)
    modes = steering_modes(pipes.family.name, (STRUCTURE_IMAGE,)) if pipes.family else ()

    own = {"vae": _posterior_mean(t2i.vae)} if pipes.family and pipes.family.name in SAMPLES_CONTROL_UNSEEDED else {}

    def derived(auto, mode=None):
        if mode is not None and mode not in modes:
            return None
        pipe = auto.from_pipe(t2i, controlnet=net, **own)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    with loading("ControlNet", spec):
        return dataclasses.replace(pipes, t2i=derived(AutoPipelineForText2Image),
                                   img2img=derived(AutoPipelineForImage2Image, IMG2IMG),
                                   inpaint=derived(AutoPipelineForInpainting, INPAINT))
