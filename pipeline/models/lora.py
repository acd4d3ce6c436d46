"""LoRAs under torch.compile: one adapter slot, hot-swapped, so switching style never recompiles."""

from __future__ import annotations

from pipeline.models.diffusion import DiffusionPipelines
from pipeline.models.loading import loading


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
