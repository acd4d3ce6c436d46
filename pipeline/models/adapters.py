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


def _ip_layout(unet) -> list[tuple[str, tuple[int, int]]]:
    """The `to_k_ip` keys and shapes an IP-Adapter for this UNet has: diffusers numbers the
    cross-attention processors 1, 3, 5, … and each `to_k_ip` has its attention's `to_k` shape."""
    names = [n.removesuffix(".processor") for n in unet.attn_processors if n.endswith("attn2.processor")]
    return [(f"ip_adapter.{1 + 2 * j}.to_k_ip.weight", tuple(unet.get_submodule(n).to_k.weight.shape))
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


def _ip_weight(folder: Path, unet, weight_name: str | None) -> str:
    """`weight_name` when it fits this UNet's cross-attention, else the one file that does."""
    layout = _ip_layout(unet)
    if weight_name and not (folder / weight_name).is_file():
        raise FileNotFoundError(f"no IP-Adapter weights {weight_name} in {folder}")
    named = [folder / weight_name] if weight_name else sorted(folder.rglob("*.safetensors"))
    fits = [str(f.relative_to(folder)) for f in named if _fits_ip(f, layout)]
    if len(fits) == 1:
        return fits[0]
    if len(fits) > 1:
        raise ValueError(f"several IP-Adapter weight files fit this model: {', '.join(fits)}; name one")
    what = (f"{weight_name} in {folder} does not" if weight_name else
            f"no IP-Adapter weights (*.safetensors with image_proj.* and ip_adapter.* keys) in {folder}")
    raise ValueError(f"{what} fit this model ({len(layout)} cross-attentions, "
                     f"{unet.config.cross_attention_dim} wide)")


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
    """Load an IP-Adapter into the model's UNet and its image encoder into all three pipelines.

    `weight_name` (relative to the folder) picks the file; by default the one whose layers fit
    the UNet. Once loaded, every call must pass a style image or its embeds: for a candidate
    without one, pass any embeds with `set_ip_adapter_scale(0)` (the adapter is then skipped).
    Load it before `load_controlnet`, whose pipelines take the image encoder from `pipes.t2i`.
    """
    t2i = pipes.t2i
    with loading("IP-Adapter", spec):
        folder = _folder(spec)
        weight = _ip_weight(folder, t2i.unet, weight_name)
        encoder = _image_encoder(folder, weight)
        subfolder = "" if (parent := Path(weight).parent.as_posix()) == "." else parent
        # diffusers reads a bare folder name as relative to `subfolder`, a path as from the root
        t2i.load_ip_adapter(str(folder), subfolder=subfolder, weight_name=Path(weight).name,
                            image_encoder_folder=encoder if "/" in encoder or not subfolder else f"./{encoder}",
                            local_files_only=True)
    for pipe in (pipes.img2img, pipes.inpaint):
        if pipe is not None:
            pipe.register_modules(image_encoder=t2i.image_encoder, feature_extractor=t2i.feature_extractor)
    t2i.set_ip_adapter_scale(scale)  # the processors are the shared UNet's: all pipelines follow
    return IPAdapter(spec=spec, weight_name=weight, image_encoder=encoder)


def embed_style_image(pipe, image) -> Any:
    """A style image's IP-Adapter embeds, once per distinct image: a (2, 1, D) tensor, the
    unconditional row then the image's (diffusers' layout for classifier-free guidance)."""
    import torch

    with torch.no_grad():
        (embeds,) = pipe.prepare_ip_adapter_image_embeds(image, None, pipe.device, 1, True)
    return embeds


def style_embeds(pipe, embeds, guidance_scale: float) -> list:
    """`ip_adapter_image_embeds=` for a call whose prompts all share the style image `embeds`
    (from `embed_style_image`): without classifier-free guidance the unconditional row goes."""
    guided = guidance_scale > 1 and pipe.unet.config.time_cond_proj_dim is None
    return [embeds if guided else embeds[1:]]


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


def _fits_controlnet(config: dict, unet) -> bool:
    """A ControlNet mirrors its base UNet's encoder: same widths, cross-attention, embeddings."""
    return all(config.get(k) == unet.config.get(k) for k in
               ("cross_attention_dim", "addition_embed_type", "in_channels")) \
        and list(config.get("block_out_channels", ())) == list(unet.config.block_out_channels)


def _controlnet_folder(folder: Path, unet) -> Path:
    """`folder` itself when it holds one ControlNet, else its one subfolder that fits the UNet."""
    import json

    def config(f: Path) -> dict | None:
        c = json.loads((f / "config.json").read_text()) if (f / "config.json").is_file() else None
        return c if c and c.get("_class_name") == "ControlNetModel" else None

    if (root := config(folder)) is not None:
        if not _fits_controlnet(root, unet):
            raise ValueError(f"the ControlNet in {folder} is for another base model (cross-attention "
                             f"{root.get('cross_attention_dim')} wide, this model's is "
                             f"{unet.config.cross_attention_dim})")
        return folder
    fits = sorted(f for f in folder.iterdir() if f.is_dir() and (c := config(f)) and _fits_controlnet(c, unet))
    if len(fits) != 1:
        found = "none" if not fits else ", ".join(f.name for f in fits)
        raise ValueError(f"{folder} should hold one ControlNet for this model, found {found}")
    return fits[0]


def load_controlnet(pipes: DiffusionPipelines, spec: str) -> DiffusionPipelines:
    """Text-to-image, image-to-image and inpainting ControlNet pipelines over the model's own
    modules (`from_pipe` copies no tensors) and one ControlNet, fitted to the model. Their
    `image` / `control_image` is the structure image (an edge map: `stages/structure.py`);
    `controlnet_conditioning_scale` says how strongly it steers."""
    from diffusers import (
        AutoPipelineForImage2Image,
        AutoPipelineForInpainting,
        AutoPipelineForText2Image,
        ControlNetModel,
    )

    t2i = pipes.t2i
    with loading("ControlNet", spec):
        folder = _controlnet_folder(_folder(spec), t2i.unet)
        net = ControlNetModel.from_pretrained(folder, dtype=t2i.unet.dtype, use_safetensors=True,
                                              local_files_only=True)
    net.to(t2i.device)

    def derived(auto):
        pipe = auto.from_pipe(t2i, controlnet=net)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    def optional(auto):
        try:
            return derived(auto)
        except ValueError:  # no such ControlNet pipeline for this architecture
            return None

    with loading("ControlNet", spec):
        cn_t2i = derived(AutoPipelineForText2Image)
    return dataclasses.replace(pipes, t2i=cn_t2i, img2img=optional(AutoPipelineForImage2Image),
                               inpaint=optional(AutoPipelineForInpainting))
