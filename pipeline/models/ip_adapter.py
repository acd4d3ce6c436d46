"""An IP-Adapter over a loaded diffusion model: a style image steering generation. It is trained
for one base's cross-attention, so a folder may hold one per base (as h94/IP-Adapter does, and
the embedded one); the loader picks the one that fits the loaded denoiser (UNet, FLUX or SD3
transformer) and loads it through diffusers' own `load_ip_adapter`, local files only.

Batching (diffusers 0.42): a call takes ONE style image for all its prompts.
`ip_adapter_image_embeds` are tiled over the batch, so per-sample embeds (one row per prompt)
do not fail: each prompt silently attends to every row, i.e. to all its batch mates' style
images. Group candidates by style image (and scale, which is per call too).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from pipeline.models.diffusion import DiffusionPipelines, denoiser
from pipeline.models.families import FLUX, SD3
from pipeline.models.loading import adapter_folder, loading

IMAGE_ENCODER = "image_encoder"  # the folder name diffusers and h94 use for the image encoder


@dataclasses.dataclass(frozen=True)
class IPAdapter:
    """Which files an IP-Adapter spec resolved to (for the record and for messages)."""

    spec: str
    weight_name: str  # relative to the spec's folder
    image_encoder: str  # relative to the spec's folder


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
        folder = adapter_folder(spec)
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
