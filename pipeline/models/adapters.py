"""Adapters over a loaded diffusion model: an IP-Adapter (a style image) and a ControlNet (a
structure image). Both are trained for one base's cross-attention, so a folder may hold one per
base (as h94/IP-Adapter does, and the embedded ones); the loader picks the one that fits.

An adapter spec is `embedded:<name>`, a local folder, or a hub id already in the local Hugging
Face cache. Loading goes through diffusers' own calls (`load_ip_adapter`,
`ControlNetModel.from_pretrained`) with local files only.

Batching with an IP-Adapter (diffusers 0.42): a call takes ONE style image for all its prompts.
`ip_adapter_image_embeds` are tiled over the batch, so per-sample embeds (one row per prompt)
do not fail: each prompt silently attends to every row, i.e. to all its batch mates' style
images. Group candidates by style image (and scale, which is per call too).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.models.diffusion import DiffusionPipelines
from pipeline.models.families import FLUX, SD3
from pipeline.models.loading import loading, locate

IMAGE_ENCODER = "image_encoder"  # the folder name diffusers and h94 use for the image encoder


def _folder(spec: str) -> Path:
    """The local folder of an adapter spec: embedded, a path, or a hub id's cached snapshot."""
    path, _ = locate(spec)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, local_files_only=True))


# ---- IP-Adapter ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class IPAdapter:
    """Which files an IP-Adapter spec resolved to (for the record and for messages)."""

    spec: str
    weight_name: str  # relative to the spec's folder
    image_encoder: str  # relative to the spec's folder


def denoiser(pipe):
    """The pipeline's denoising network: its UNet, or its transformer (FLUX, SD3)."""
    return getattr(pipe, "unet", None) or pipe.transformer


def _ip_layout(net) -> list[tuple[str, tuple[int, int]]]:
    """The `to_k_ip` keys and shapes an IP-Adapter for this denoiser has. A UNet: diffusers
    numbers the cross-attention processors 1, 3, 5, … and each `to_k_ip` has its attention's
    `to_k` shape. FLUX: one per double-stream block, T5's width → the transformer's. SD3: one
    per joint attention, the transformer's width both ways."""
    if hasattr(net, "single_transformer_blocks"):  # FLUX
        shape = (net.inner_dim, net.config.joint_attention_dim)
        return [(f"ip_adapter.{j}.to_k_ip.weight", shape) for j in range(len(net.transformer_blocks))]
    if hasattr(net, "transformer_blocks"):  # SD3
        width = net.config.attention_head_dim * net.config.num_attention_heads
        return [(f"ip_adapter.{j}.to_k_ip.weight", (width, width)) for j in range(len(net.attn_processors))]
    names = [n.removesuffix(".processor") for n in net.attn_processors if n.endswith("attn2.processor")]
    return [(f"ip_adapter.{1 + 2 * j}.to_k_ip.weight", tuple(net.get_submodule(n).to_k.weight.shape))
            for j, n in enumerate(names)]


def _fits_ip(file: Path, layout: list) -> bool:
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            keys = set(f.keys())
            shapes = [tuple(f.get_slice(k).get_shape()) if k in keys else None for k, _ in layout]
    except SafetensorError:  # not a safetensors file after all: not an IP-Adapter either
        return False
    has_proj = any(k.startswith("image_proj.") for k in keys)
    ip_keys = {k for k in keys if k.endswith(".to_k_ip.weight")}
    return has_proj and ip_keys == {k for k, _ in layout} and shapes == [s for _, s in layout]


def _ip_weight(folder: Path, net, weight_name: str | None) -> str:
    """`weight_name` when it fits this denoiser's attentions, else the one file that does
    (a named file that is not safetensors, such as InstantX's ip-adapter.bin, is taken as named)."""
    layout = _ip_layout(net)
    if weight_name and not (folder / weight_name).is_file():
        raise FileNotFoundError(f"no IP-Adapter weights {weight_name} in {folder}")
    if weight_name and not weight_name.endswith(".safetensors"):
        return weight_name
    named = [folder / weight_name] if weight_name else sorted(folder.rglob("*.safetensors"))
    fits = [str(f.relative_to(folder)) for f in named if _fits_ip(f, layout)]
    if len(fits) == 1:
        return fits[0]
    if len(fits) > 1:
        raise ValueError(f"several IP-Adapter weight files fit this model: {', '.join(fits)}; name one")
    what = (f"{weight_name} in {folder} does not" if weight_name else
            f"no IP-Adapter weights (*.safetensors with image_proj.* and ip_adapter.* keys) in {folder}")
    width = layout[0][1] if layout else "?"
    raise ValueError(f"{what} fit this model ({len(layout)} attentions taking an image, to_k_ip {width})")


def _image_encoder(folder: Path, weight_name: str) -> str:
    """`image_encoder/` beside the weight file, else at the folder's root (h94's layout)."""
    beside = Path(weight_name).parent / IMAGE_ENCODER
    if (folder / beside / "config.json").is_file():
        return beside.as_posix()
    if (folder / IMAGE_ENCODER / "config.json").is_file():
        return IMAGE_ENCODER
    raise ValueError(f"no {IMAGE_ENCODER}/ with a config.json beside {weight_name} or in {folder}")


def load_ip_adapter(pipes: DiffusionPipelines, spec: str, *, weight_name: str | None = None,
                    scale: float = 1.0) -> IPAdapter:
    """Load an IP-Adapter into the model's denoiser and its image encoder into all three pipelines.

    `weight_name` (relative to the folder) picks the file; by default the one whose layers fit
    the denoiser. Once loaded, every call must pass a style image or its embeds: for a candidate
    without one, pass any embeds with `set_ip_adapter_scale(0)` (the adapter is then skipped).
    Load it before `load_controlnet`, whose pipelines take the image encoder from `pipes.t2i`.
    Each family's loader takes the image encoder its own way: the UNet one as a folder relative
    to the weights' subfolder, FLUX's as a model path (its dtype given: it defaults to fp16),
    SD3's as a path it reads directly (SigLIP, with its image processor).
    """
    t2i = pipes.t2i
    with loading("IP-Adapter", spec):
        folder = _folder(spec)
        weight = _ip_weight(folder, denoiser(t2i), weight_name)
        encoder = _image_encoder(folder, weight)
        subfolder = "" if (parent := Path(weight).parent.as_posix()) == "." else parent
        name, family = Path(weight).name, pipes.family.name if pipes.family else None
        if family == FLUX:
            t2i.load_ip_adapter(str(folder), weight_name=name, subfolder=subfolder,
                                image_encoder_pretrained_model_name_or_path=str(folder / encoder),
                                image_encoder_dtype=t2i.transformer.dtype, local_files_only=True)
        elif family == SD3:
            t2i.load_ip_adapter(str(folder), weight_name=name, subfolder=subfolder or None,
                                image_encoder_folder=str((folder / encoder).absolute()), local_files_only=True)
        else:  # diffusers reads a bare folder name as relative to `subfolder`, a path as from the root
            t2i.load_ip_adapter(str(folder), subfolder=subfolder, weight_name=name,
                                image_encoder_folder=encoder if "/" in encoder or not subfolder else f"./{encoder}",
                                local_files_only=True)
    for pipe in (pipes.img2img, pipes.inpaint):
        if pipe is not None:
            pipe.register_modules(image_encoder=t2i.image_encoder, feature_extractor=t2i.feature_extractor)
    t2i.set_ip_adapter_scale(scale)  # the processors are the shared denoiser's: all pipelines follow
    return IPAdapter(spec=spec, weight_name=weight, image_encoder=encoder)


def embed_style_image(pipe, image, family: str | None) -> Any:
    """A style image's IP-Adapter embeds, once per distinct image. UNet families and SD3: the
    unconditional row then the image's (diffusers' layout for classifier-free guidance; SD3's
    unconditional row is zeros). FLUX: the image's alone, as the one adapter's list."""
    import torch

    with torch.no_grad():
        if family == FLUX:
            return pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1)
        if family == SD3:  # one tensor, not a list per adapter
            return pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1, True)
        (embeds,) = pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1, True)
    return embeds


def style_embeds(pipe, embeds, guidance_scale: float, family: str | None, blank=None) -> dict[str, Any]:
    """The call arguments for prompts that all share the style image `embeds` (from
    `embed_style_image`): without classifier-free guidance the unconditional row goes. FLUX
    takes the unconditional image apart (`negative_…`, read by true CFG; left to itself the
    pipeline encodes a black image in every call): `blank`, a black image's embeds."""
    if family == FLUX:
        return {"ip_adapter_image_embeds": embeds, "negative_ip_adapter_image_embeds": blank}
    if family == SD3:
        return {"ip_adapter_image_embeds": embeds if guidance_scale > 1 else embeds[1:]}
    guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    return {"ip_adapter_image_embeds": [embeds if guided else embeds[1:]]}


# ---- LoRA under torch.compile -------------------------------------------------------------


def lora_rank(path: str) -> int:
    """The largest rank of a LoRA file's layers (its down / A matrices' rows), from its header."""
    from safetensors import safe_open

    with safe_open(path, framework="pt") as f:
        ranks = [f.get_slice(k).get_shape()[0] for k in f.keys() if "lora_A" in k or "lora_down" in k  # noqa: SIM118
                 or "lora.down" in k]
    if not ranks:
        raise ValueError(f"{path}: no LoRA down/A matrices in it")
    return max(ranks)


def enable_lora_hotswap(pipes: DiffusionPipelines, loras: tuple[str, ...]) -> None:
    """Before a compiled model's first LoRA: one adapter slot, padded to the largest rank of the
    styles' LoRAs, whose weights are replaced in place (`load_lora_weights(..., hotswap=True)`),
    so switching style never recompiles (a set of loaded adapters switched by `set_adapters`
    recompiles per combination). Measured on CPU: a swap reuses the compiled graph and gives
    the pixels of a fresh load; a first scale change compiles once more, then never again."""
    from pipeline.storage.uris import local_copy

    with loading("LoRA", loras[0]):
        rank = max(lora_rank(local_copy(path)) for path in loras)
    pipes.t2i.enable_lora_hotswap(target_rank=rank)


# ---- ControlNet ---------------------------------------------------------------------------


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
        folder = _controlnet_folder(_folder(spec), base)
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
