"""The generation stage: batch candidates by shape and settings, one CPU generator each.

A candidate's starting noise comes from its own `torch.Generator("cpu").manual_seed(seed)`,
so its image does not depend on the batch, the actor or the GPU it ran on. A batch that
fails with out-of-memory is split in half and retried; a candidate that still fails becomes
an error with its message, and the rest of the batch goes on. What an image-to-image or
inpainting candidate starts from, and the product pasted back, is `product.py`'s.
"""

from __future__ import annotations

import inspect
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np

from pipeline import faults
from pipeline.models.families import count_tokens, truncated_by
from pipeline.models.held import free_memory
from pipeline.spec.tokens import truncated
from pipeline.spec.vocabulary import GENERATE_ERROR, IMG2IMG, INPAINT, OUTPAINT, T2I
from pipeline.stages import outpaint
from pipeline.stages.contract import CANVAS
from pipeline.stages.product import composite, starting_images

SLOT = "style_lora"  # the one adapter of a hot-swapping (compiled) model
PRELOADED_LORAS = 32  # LoRAs an actor loads at start, per model: a few MB each for SD, tens for SDXL
GROUP_KEYS = ("mode", "width", "height", "steps", "guidance_scale", "strength", "lora", "lora_scale",
              "style_image", "style_image_scale", "structure_scale")


def group_key(candidate: dict) -> tuple:
    """What must be equal within one pipeline call, so that no candidate's conditioning depends
    on its batch mates. That includes whether a negative prompt is given: a call takes one for
    all or none, and SDXL-class pipelines encode an absent one as zeros but "" as text. A style
    image is one per call (diffusers gives a call's every prompt all the images it is handed);
    structure images may differ within a call, but not whether there is one, nor their weight."""
    return (*(candidate[k] for k in GROUP_KEYS), bool(candidate["negative_prompt"]),
            candidate["structure_image"] is not None)


@dataclass
class Generated:
    """What generation made of one candidate: pixels or an error, and its timing."""

    image: np.ndarray | None = None  # HxWx3 uint8
    error: str | None = None
    ms: float = 0.0  # model time of every attempt at it, failed ones included (shared by their batch)
    batch_size: int = 0
    batch_position: int = 0
    attempt: int = 1
    truncated: bool = False
    truncated_by: str | None = None  # the text encoders that cut the prompt ("text_encoder_2:t5")


def is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.OutOfMemoryError | MemoryError) or "out of memory" in str(error).lower()


class Generator:
    """Runs the diffusion pipelines over candidate records (dicts with plan columns)."""

    def __init__(self, pipelines, batch_size: int, true_cfg_scale: float = 1.0, ip_adapter: str | None = None,
                 controlnet: str | None = None, loras: tuple[str, ...] = (), hotswap: bool = False):
        """`ip_adapter` / `controlnet`: loaded when some candidate of this model has a style /
        structure image (`stages/conditioning.py` prepares both). `loras`: the styles' LoRAs,
        loaded now (up to PRELOADED_LORAS; others on first use), so switching style mid-run only
        switches adapters (about 16 ms on the tiny model) instead of reading weights (about 140 ms).
        `hotswap` (a compiled model, `models.lora.enable_lora_hotswap` called): one adapter
        slot whose weights are swapped in place, and "no LoRA" is that slot at scale 0 (the
        same pixels as without it), so a style switch never recompiles."""
        from pipeline.stages.conditioning import Conditioning

        self.pipes = pipelines
        self.batch_size = batch_size
        self.true_cfg_scale = true_cfg_scale  # FLUX: > 1 runs a real second pass for the negative prompt
        self.conditioning = Conditioning(pipelines, ip_adapter, controlnet)
        self._adapters: dict[str, str] = {}  # LoRA file → adapter name, loaded once per actor
        self._active: tuple[str, float] | None = None
        self.hotswap = hotswap
        for path in loras[:1 if hotswap else PRELOADED_LORAS]:
            self._load_lora(path)
        if self._adapters:  # loaded, not on: a candidate without a LoRA runs as the bare model
            if hotswap:
                self.pipes.t2i.set_adapters([SLOT], [0.0])
            else:
                self.pipes.t2i.disable_lora()

    def __call__(self, candidates: list[dict]) -> list[Generated]:
        # 1. group by everything that must be equal within one pipeline call
        groups: dict[tuple, list[int]] = defaultdict(list)
        for i, c in enumerate(candidates):
            groups[group_key(c)].append(i)
        out: list[Generated | None] = [None] * len(candidates)
        # 2. run each group in chunks of the batch size, splitting on OOM
        for indices in groups.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start:start + self.batch_size]
                self._run([candidates[i] for i in chunk], chunk, out, attempt=1)
        return out  # type: ignore[return-value]

    def _run(self, cands: list[dict], slots: list[int], out: list, attempt: int, spent: float = 0.0) -> None:
        """Generate `cands` as one batch; a batch that fails is split in half and each half tried
        again. Every attempt's model time is paid for: `spent` is what the failed attempts before
        this one cost each of these candidates (ms), and is added to what this one costs."""
        t0 = time.perf_counter()
        try:
            images = self._generate(cands)
        except Exception as e:  # noqa: BLE001 — failures are rows, not crashes
            spent += (time.perf_counter() - t0) * 1000 / len(cands)  # the failed batch's time, shared
            if len(cands) > 1:
                half = (len(cands) + 1) // 2
                if is_oom(e):
                    free_memory()
                self._run(cands[:half], slots[:half], out, attempt + 1, spent)
                self._run(cands[half:], slots[half:], out, attempt + 1, spent)
                return
            out[slots[0]] = Generated(error=f"{GENERATE_ERROR}: {type(e).__name__}: {e}", ms=spent, attempt=attempt)
            return
        ms = spent + (time.perf_counter() - t0) * 1000 / len(cands)
        cut = self._truncated_by([c["prompt"] for c in cands])
        for pos, (slot, image) in enumerate(zip(slots, images, strict=True)):
            out[slot] = Generated(image=image, ms=ms, batch_size=len(cands), batch_position=pos, attempt=attempt,
                                  truncated=bool(cut[pos]), truncated_by=",".join(cut[pos]) or None)

    def _truncated_by(self, prompts: list[str]) -> list[tuple[str, ...]]:
        """For each prompt, the text encoders that cut it ("<component>:<clip|t5>"), each by its own
        window (CLIP 77, T5 256 or 512: models/families.py); the first tokenizer's when the family
        is unknown."""
        family = self.pipes.family
        if family is None:
            tok = getattr(self.pipes.t2i, "tokenizer", None)
            if tok is None:
                return [()] * len(prompts)
            ids = tok(prompts, truncation=False)["input_ids"]
            return [("text_encoder",) if truncated(len(x), tok.model_max_length) else () for x in ids]
        kinds = {e.name: e.kind for e in family.encoders}
        cut = truncated_by(family, count_tokens(self.pipes.t2i, family, prompts))
        return [tuple(f"{name}:{kinds[name]}" for name in names) for names in cut]

    def _use_lora(self, path: str | None, scale: float | None) -> None:
        """The style's LoRA on (loaded on first use), or every LoRA off. The three pipelines
        share their modules, so switching on the text-to-image one switches all."""
        pipe = self.pipes.t2i
        wanted = (path, float(scale)) if path else None
        if wanted == self._active:
            return
        if self.hotswap:
            self._swap_lora(wanted)
        elif wanted is None:
            pipe.disable_lora()
        else:
            self._load_lora(path)
            pipe.enable_lora()
            pipe.set_adapters([self._adapters[path]], [wanted[1]])
        self._active = wanted

    def _swap_lora(self, wanted: tuple[str, float] | None) -> None:
        """Under hot-swap: the slot's weights replaced by the wanted LoRA's, or its scale set to 0."""
        if wanted is None:
            if self._adapters:  # nothing loaded yet: the model runs as it is
                self.pipes.t2i.set_adapters([SLOT], [0.0])
            self._active = None
            return
        path, scale = wanted
        if path not in self._adapters:
            self._load_lora(path)
        self.pipes.t2i.set_adapters([SLOT], [scale])
        self._active = wanted

    def _load_lora(self, path: str) -> None:
        """A style's LoRA as an adapter of the shared modules, once per actor."""
        if path in self._adapters:
            return
        import os

        from pipeline.storage.uris import local_copy

        local = local_copy(path)  # a LoRA on object storage is fetched once per node
        swap = self.hotswap and bool(self._adapters)
        name = SLOT if self.hotswap else f"style_lora_{len(self._adapters)}"
        self.pipes.t2i.load_lora_weights(os.path.dirname(local), weight_name=os.path.basename(local),
                                         adapter_name=name, use_safetensors=True, hotswap=swap)
        if swap:
            self._adapters.clear()  # the slot holds this LoRA now, no other
        self._adapters[path] = name

    def _generate(self, cands: list[dict]) -> list[np.ndarray]:
        import torch

        _injected_faults(cands)

        first = cands[0]
        mode = first["mode"]
        pipes = self.conditioning.pipelines(first)  # ControlNet ones for a structure image
        pipe = {T2I: pipes.t2i, IMG2IMG: pipes.img2img, INPAINT: pipes.inpaint, OUTPAINT: pipes.inpaint}[mode]
        if pipe is None:
            raise ValueError(f"model {self.pipes.model_id!r} has no {mode} pipeline"
                             + (" with a ControlNet" if pipes is not self.pipes else ""))
        self._use_lora(first["lora"], first["lora_scale"])
        params = inspect.signature(pipe.__call__).parameters
        kwargs = {
            "prompt": [c["prompt"] for c in cands],
            "num_inference_steps": int(first["steps"]),
            "guidance_scale": float(first["guidance_scale"]),
            "generator": [torch.Generator("cpu").manual_seed(int(c["seed"])) for c in cands],
            "output_type": "np",
        }
        if "negative_prompt" in params and first["negative_prompt"]:  # all or none (group_key)
            kwargs["negative_prompt"] = [c["negative_prompt"] for c in cands]
            if "true_cfg_scale" in params:  # FLUX reads a negative prompt only in a true CFG pass
                kwargs["true_cfg_scale"] = self.true_cfg_scale
        if "width" in params:  # FLUX and SD3 image-to-image too: else they make 1024 px
            kwargs.update(width=int(first["width"]), height=int(first["height"]))
        if mode == OUTPAINT:  # a channel format: margins painted around its parent's image
            made = [outpaint.prepare(c[CANVAS], c["variant"], c["placement"], (c["width"], c["height"]))
                    for c in cands]
            kwargs.update(image=[m.start for m in made], mask_image=[m.mask for m in made],
                          strength=float(first["strength"]))
        elif mode != T2I:
            layers, inputs = starting_images(cands, mode, int(first["width"]), int(first["height"]))
            kwargs.update(image=[i[0] for i in inputs], strength=float(first["strength"]))
            if mode == INPAINT:
                kwargs.update(mask_image=[i[1] for i in inputs])
        kwargs.update(self.conditioning.arguments(pipe, cands, mode))
        with torch.inference_mode():
            result = pipe(**kwargs).images
        _injected_faults(cands, after_model=True)
        images = [np.clip(np.rint(np.asarray(img) * 255), 0, 255).astype(np.uint8) for img in result]
        if mode == INPAINT:
            images = [composite(img, *layer) for img, layer in zip(images, layers, strict=True)]
        elif mode == OUTPAINT:  # the source back exact; an exact size resized to its pixels
            from PIL import Image

            images = [np.asarray(m.finish(Image.fromarray(img))) for img, m in zip(images, made, strict=True)]
        return images


def _injected_faults(cands: list[dict], after_model: bool = False) -> None:
    """Test-only failures (see pipeline/faults.py); nothing happens unless armed."""
    import torch

    if after_model:
        if faults.arg("candidate.oom_after_model") is not None and len(cands) > 1:
            raise torch.OutOfMemoryError("CUDA out of memory (injected, after the model ran)")
        return
    bad_seeds = set((faults.arg("candidate.error") or "").split("|")) - {""}
    if bad := sorted(bad_seeds & {str(c["seed"]) for c in cands}):
        raise RuntimeError(f"injected failure for seed {bad[0]}")
    if faults.arg("candidate.oom") is not None and len(cands) > 1:
        raise torch.OutOfMemoryError("CUDA out of memory (injected)")

