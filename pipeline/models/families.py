"""What a diffusion family means to the rest of the pipeline: its modes, what its guidance scale
does, whether a negative prompt is read, and each text encoder's token window.

Four families, as diffusers 0.42 runs them. UNet families (`sd`, `sdxl`) and SD3 use
classifier-free guidance: `guidance_scale` > 1 runs the negative (or empty) prompt beside the
prompt. FLUX.1-dev was distilled with its guidance scale as an input of the transformer
(`guidance_embeds`): one pass per step, no negative prompt, unless `true_cfg_scale` > 1 runs a
real second pass. FLUX.1-schnell has no guidance input: `guidance_scale` is silently ignored.

Each text encoder reads at most its window of tokens (special tokens counted) and drops the
rest: CLIP its tokenizer's `model_max_length` (77), T5 the pipeline's `max_sequence_length`
(a `__call__` default: 512 for FLUX, 256 for SD3; FLUX.1-schnell was trained with 256, which
the caller passes). Data and pure functions; `describe` reads a loaded pipeline,
`describe_folder` a model folder without importing torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from pipeline.spec.tokens import truncated
from pipeline.spec.vocabulary import IMG2IMG, INPAINT, T2I

SD, SDXL, FLUX, SD3 = "sd", "sdxl", "flux", "sd3"
CFG, DISTILLED, NO_GUIDANCE = "cfg", "distilled", "none"  # what guidance_scale does
CLIP, T5 = "clip", "t5"

# Pipeline class of any mode (model_index.json's `_class_name`) → family.
CLASS_FAMILIES = {
    **dict.fromkeys(("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline",
                     "StableDiffusionInpaintPipeline"), SD),
    **dict.fromkeys(("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline",
                     "StableDiffusionXLInpaintPipeline"), SDXL),
    **dict.fromkeys(("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"), FLUX),
    **dict.fromkeys(("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                     "StableDiffusion3InpaintPipeline"), SD3),
}
# The modes diffusers 0.42's AutoPipelines derive for each family (tests check against them).
MODES = {SD: (T2I, IMG2IMG, INPAINT), SDXL: (T2I, IMG2IMG, INPAINT), FLUX: (T2I, IMG2IMG, INPAINT),
         SD3: (T2I, IMG2IMG, INPAINT)}
# What steers a family besides its prompt, in which modes, as diffusers 0.42's pipelines wire it:
# a style image (an IP-Adapter, models/ip_adapter.py), a structure image (a ControlNet), or both
# in one call. FLUX's ControlNet image-to-image and inpainting pipelines take no IP-Adapter, and
# a FLUX transformer with one loaded needs its embeds in every call: there a structure image
# works in those modes only on a model that carries no IP-Adapter. SD3 has a ControlNet
# pipeline for text-to-image only (its inpainting one needs an inpainting-trained ControlNet).
STYLE_IMAGE, STRUCTURE_IMAGE = "style_image", "structure_image"
BOTH = (STYLE_IMAGE, STRUCTURE_IMAGE)
_EVERY = (T2I, IMG2IMG, INPAINT)
STEERING = {
    SD: {(STYLE_IMAGE,): _EVERY, (STRUCTURE_IMAGE,): _EVERY, BOTH: _EVERY},
    SDXL: {(STYLE_IMAGE,): _EVERY, (STRUCTURE_IMAGE,): _EVERY, BOTH: _EVERY},
    FLUX: {(STYLE_IMAGE,): _EVERY, (STRUCTURE_IMAGE,): _EVERY, BOTH: (T2I,)},
    SD3: {(STYLE_IMAGE,): _EVERY, (STRUCTURE_IMAGE,): (T2I,), BOTH: (T2I,)},
}


def steering_modes(family: str, steering: tuple[str, ...]) -> tuple[str, ...]:
    """The modes in which `family` runs a call steered by `steering` (a key of STEERING; a model
    carrying an IP-Adapter counts as steered by a style image in every call)."""
    return STEERING[family][steering] if steering else MODES[family]


# The call argument that must exceed 1 for `negative_prompt` to change anything.
NEGATIVE_SCALE = {SD: "guidance_scale", SDXL: "guidance_scale", SD3: "guidance_scale", FLUX: "true_cfg_scale"}
# `__call__`'s default `max_sequence_length` (T5's window), in every mode (tests check the signatures).
MAX_SEQUENCE_LENGTH = {FLUX: 512, SD3: 256}
# (text encoder, its tokenizer) components, in the order the pipelines name them.
TEXT_COMPONENTS = (("text_encoder", "tokenizer"), ("text_encoder_2", "tokenizer_2"),
                   ("text_encoder_3", "tokenizer_3"))


@dataclass(frozen=True)
class Encoder:
    """One text encoder: its component name, tokenizer component, kind and token window."""

    name: str  # "text_encoder", "text_encoder_2", …
    tokenizer: str  # "tokenizer", "tokenizer_2", …
    kind: str  # CLIP | T5
    window: int  # tokens it reads, special tokens counted; the rest is dropped


@dataclass(frozen=True)
class Family:
    name: str  # SD | SDXL | FLUX | SD3
    modes: tuple[str, ...]
    guidance: str  # CFG | DISTILLED | NO_GUIDANCE
    negative_scale: str  # "guidance_scale" or "true_cfg_scale": > 1 for a negative prompt to count
    encoders: tuple[Encoder, ...]

    @property
    def windows(self) -> dict[str, int]:
        """Text encoder name → its token window."""
        return {e.name: e.window for e in self.encoders}


def family_name(class_name: str) -> str | None:
    """The family of a pipeline class name, or None for one outside the four."""
    return CLASS_FAMILIES.get(class_name)


def guidance(family: str, guidance_embeds: bool | None) -> str:
    """What `guidance_scale` does: FLUX's transformer embeds it when `guidance_embeds` (dev) and
    has no use for it otherwise (schnell); every other family guides classifier-free."""
    if family == FLUX:
        return DISTILLED if guidance_embeds else NO_GUIDANCE
    return CFG


def encoder_kind(encoder_class: str) -> str:
    return T5 if encoder_class.startswith(("T5", "UMT5")) else CLIP


def window(family: str, kind: str, model_max_length: int, max_sequence_length: int | None = None) -> int:
    """The tokens an encoder reads: a T5 encoder is cut at `max_sequence_length` (the call's, or
    the pipeline's default), a CLIP one at its tokenizer's `model_max_length`."""
    if kind == T5:
        return int(max_sequence_length or MAX_SEQUENCE_LENGTH[family])
    return int(model_max_length)


def make_family(class_name: str, encoders: list[tuple[str, str, str, int]], guidance_embeds: bool | None,
                max_sequence_length: int | None = None) -> Family | None:
    """A Family from plain facts: the pipeline class, its (encoder, tokenizer, encoder class,
    tokenizer model_max_length) for each text encoder present, and the transformer's
    `guidance_embeds`. None for a pipeline outside the four families."""
    name = family_name(class_name)
    if name is None:
        return None
    made = []
    for enc, tok, cls, max_len in encoders:
        kind = encoder_kind(cls)
        made.append(Encoder(enc, tok, kind, window(name, kind, max_len, max_sequence_length)))
    return Family(name=name, modes=MODES[name], guidance=guidance(name, guidance_embeds),
                  negative_scale=NEGATIVE_SCALE[name], encoders=tuple(made))


def describe(pipe, max_sequence_length: int | None = None) -> Family | None:
    """The Family of a loaded diffusers pipeline (any mode)."""
    encoders = [(enc, tok, type(getattr(pipe, enc)).__name__, getattr(pipe, tok).model_max_length)
                for enc, tok in TEXT_COMPONENTS
                if getattr(pipe, enc, None) is not None and getattr(pipe, tok, None) is not None]
    transformer = getattr(pipe, "transformer", None)
    embeds = transformer.config.get("guidance_embeds") if transformer is not None else None
    return make_family(type(pipe).__name__, encoders, embeds, max_sequence_length)


def describe_folder(folder: Path | str, max_sequence_length: int | None = None) -> Family | None:
    """The Family of a diffusers model folder, from its JSON files alone (no torch): for checks
    before a run. None when it is not a diffusers pipeline folder of the four families."""
    folder = Path(folder)
    try:
        index = json.loads((folder / "model_index.json").read_text())
        encoders = []
        for enc, tok in TEXT_COMPONENTS:
            cls = _component_class(index, enc)
            if cls and _component_class(index, tok):
                config = json.loads((folder / tok / "tokenizer_config.json").read_text())
                encoders.append((enc, tok, cls, int(config.get("model_max_length", 77))))
        transformer = folder / "transformer" / "config.json"
        embeds = json.loads(transformer.read_text()).get("guidance_embeds") if transformer.is_file() else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None  # unreadable: loading the model reports it
    return make_family(str(index.get("_class_name")), encoders, embeds, max_sequence_length)


def _component_class(index: dict, name: str) -> str | None:
    """model_index.json names a component as [library, class]; [null, null] when absent."""
    entry = index.get(name)
    return entry[1] if isinstance(entry, list) and len(entry) == 2 else None


def count_tokens(pipe, family: Family, prompts: list[str]) -> dict[str, list[int]]:
    """Encoder name → each prompt's token count by that encoder's own tokenizer, its special
    tokens counted (what `window` is measured against)."""
    counts = {}
    for enc in family.encoders:
        ids = getattr(pipe, enc.tokenizer)(list(prompts), truncation=False)["input_ids"]
        counts[enc.name] = [len(x) for x in ids]
    return counts


def truncated_by(family: Family, counts: dict[str, list[int]]) -> list[tuple[str, ...]]:
    """For each prompt, the encoders that cut it (empty when none did), by `spec.tokens.truncated`."""
    n = len(next(iter(counts.values()), []))
    return [tuple(e.name for e in family.encoders if truncated(counts[e.name][i], e.window)) for i in range(n)]
