"""A generator made ready on its actor: a model's pipelines, the adapters its styles use, their
LoRAs, and then the throughput options, in that order (compiling is the last change to the
modules, so a compiled model's LoRAs can be hot-swapped: `models.lora.enable_lora_hotswap`)."""

from __future__ import annotations

from pipeline.errors import ModelLoadError
from pipeline.plan.models import ModelRef, ModelUse, job_model
from pipeline.spec.config import JobConfig


def load_generator(cfg: JobConfig, ref: ModelRef, use: ModelUse, device: str, dtype):
    """A Generator over model `ref`'s pipelines for what its units need (`use`); a model that
    does not load is named with the styles that use it."""
    from pipeline.models import diffusion
    from pipeline.stages.generate import Generator

    m = cfg.models
    try:
        pipes = diffusion.load_diffusion(ref.spec, revision=ref.revision, scheduler=m.scheduler,
                                         device=device, dtype=dtype)
        hotswap = m.compile and bool(use.loras)
        if hotswap:  # before the first LoRA and compiling: style switches swap weights, never recompile
            from pipeline.models.lora import enable_lora_hotswap

            enable_lora_hotswap(pipes, use.loras)
        generator = Generator(pipes, batch_size=cfg.generate.batch_size, true_cfg_scale=cfg.generate.true_cfg_scale,
                              ip_adapter=m.ip_adapter if use.style_images else None,
                              controlnet=m.controlnet if use.structure_images else None, loras=use.loras,
                              hotswap=hotswap)
        diffusion.optimize(pipes, channels_last=m.channels_last, compile=m.compile, vae_slicing=m.vae_slicing,
                           vae_tiling=m.vae_tiling)
        return generator
    except ModelLoadError as e:
        if ref == job_model(cfg) or not use.styles:
            raise  # the job file's [models] keys: its message names them
        raise ModelLoadError(f"style(s) {', '.join(use.styles)}: {e}") from e
