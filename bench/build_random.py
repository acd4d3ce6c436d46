"""Full-size diffusion architectures with random weights, for GPU benchmarks without downloads.

    .venv/bin/python bench/build_random.py sd15 /tmp/models/sd15-random      # UNet 860M, 512 px
    .venv/bin/python bench/build_random.py sdxl /tmp/models/sdxl-random      # UNet 2.6B, 1024 px
    .venv/bin/python bench/build_random.py sdxl --count                     # parameter counts only
    .venv/bin/python bench/build_random.py sd15 /tmp/tiny-sd15 --tiny        # same code, tiny widths (CPU check)
    python3 bench/build_random.py flux /tmp/models/flux-random               # FLUX.1-dev 11.9B + T5-XXL 4.8B (GPU only)
    .venv/bin/python bench/build_random.py flux --count                     # parameter counts only (meta device)
    .venv/bin/python bench/build_random.py flux /tmp/tiny-flux --tiny        # the FLUX code path, tiny widths

The compute of a forward pass does not depend on the weights' values, so these give real
timings. Saved with `save_pretrained` (fp16 safetensors; bf16 for FLUX) and loaded by the
pipeline as a local folder: `[models] diffusion = "/tmp/models/sd15-random"`. Built on the GPU
when there is one. FLUX is built directly in bfloat16 on the device (16.7B parameters: 33 GB
in bf16, 67 GB in float32) and saved in shards; building it on a CPU is refused unless --tiny.
It is not in bench/gpu.sh's run: building, saving and loading 33 GB and 28 steps at 1024 px
(about 3.5 PFLOP an image) need a device call of their own.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SD_BETAS = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear", "num_train_timesteps": 1000}
VAE = {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
       "block_out_channels": (128, 256, 512, 512), "down_block_types": ("DownEncoderBlock2D",) * 4,
       "up_block_types": ("UpDecoderBlock2D",) * 4}
UNETS = {
    "sd15": {"sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": (320, 640, 1280, 1280), "cross_attention_dim": 768, "attention_head_dim": 8,
             "down_block_types": ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
             "up_block_types": ("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3},
    "sdxl": {"sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
             "block_out_channels": (320, 640, 1280), "cross_attention_dim": 2048,
             "attention_head_dim": (5, 10, 20), "transformer_layers_per_block": (1, 2, 10),
             "use_linear_projection": True, "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
             "projection_class_embeddings_input_dim": 2816,
             "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
             "up_block_types": ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")},
}
TEXT_L = {"vocab_size": 49408, "hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12,
          "num_attention_heads": 12, "max_position_embeddings": 77, "hidden_act": "quick_gelu"}
# FLUX.1-dev as black-forest-labs ships it: 19 double + 38 single blocks, 24 heads × 128, rope
# axes (16, 56, 56); its VAE (16 latent channels, no quant convs) and T5 v1.1 XXL's encoder.
FLUX = {"patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38, "attention_head_dim": 128,
        "num_attention_heads": 24, "joint_attention_dim": 4096, "pooled_projection_dim": 768,
        "guidance_embeds": True, "axes_dims_rope": (16, 56, 56)}
FLUX_VAE = {**VAE, "latent_channels": 16, "use_quant_conv": False, "use_post_quant_conv": False,
            "scaling_factor": 0.3611, "shift_factor": 0.1159}
FLUX_SCHEDULER = {"num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True, "base_shift": 0.5,
                  "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}
T5_XXL = {"vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240, "num_layers": 24, "num_heads": 64,
          "relative_attention_num_buckets": 32, "relative_attention_max_distance": 128,
          "feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu_new", "is_gated_act": True,
          "layer_norm_epsilon": 1e-6, "tie_word_embeddings": False, "pad_token_id": 0, "eos_token_id": 1,
          "decoder_start_token_id": 0}
TEXT_BIG_G = {"vocab_size": 49408, "hidden_size": 1280, "intermediate_size": 5120, "num_hidden_layers": 32,
              "num_attention_heads": 20, "max_position_embeddings": 77, "hidden_act": "gelu", "projection_dim": 1280}

# --tiny: the same builder and the same saved layout with tiny widths, so that a CPU check of
# bench/gpu.sh goes through every line that the GPU run will (build, save, load a local folder).
TINY_UNETS = {
    "sd15": {"sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 32, 64, 64),
             "cross_attention_dim": 32},
    "sdxl": {"sample_size": 8, "layers_per_block": 1, "block_out_channels": (32, 64, 64),
             "attention_head_dim": (2, 4, 4), "transformer_layers_per_block": (1, 1, 2),
             "cross_attention_dim": 64, "addition_time_embed_dim": 8,
             "projection_class_embeddings_input_dim": 6 * 8 + 32},
}
TINY_VAE = {"layers_per_block": 1, "block_out_channels": (32, 32, 64, 64)}
TINY_TEXT = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
TINY_FLUX = {"num_layers": 1, "num_single_layers": 2, "attention_head_dim": 16, "num_attention_heads": 2,
             "joint_attention_dim": 32, "pooled_projection_dim": 32, "axes_dims_rope": (4, 6, 6)}
TINY_T5 = {"d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_heads": 4}
ARCHS = (*UNETS, "flux")


def flux_components(tiny: bool = False):
    """FLUX.1-dev's modules, in the default device and dtype of the caller's context."""
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    transformer, vae, text_l, t5 = dict(FLUX), dict(FLUX_VAE), dict(TEXT_L), dict(T5_XXL)
    if tiny:
        transformer.update(TINY_FLUX)
        vae.update(TINY_VAE)
        text_l.update(TINY_TEXT)
        t5.update(TINY_T5)
    return {"transformer": FluxTransformer2DModel(**transformer), "vae": AutoencoderKL(**vae),
            "text_encoder": CLIPTextModel(CLIPTextConfig(**text_l)),
            "text_encoder_2": T5EncoderModel(T5Config(**t5))}


def scheduler(arch: str):
    """Made outside the device context: schedulers keep their tables on the CPU."""
    from diffusers import EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**FLUX_SCHEDULER) if arch == "flux" else EulerDiscreteScheduler(**SD_BETAS)


def components(arch: str, tiny: bool = False):
    """The architecture's modules (the scheduler is `scheduler`'s)."""
    if arch == "flux":
        return flux_components(tiny)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    unet, vae = dict(UNETS[arch]), dict(VAE)
    text_l, text_g = dict(TEXT_L), dict(TEXT_BIG_G)
    if tiny:
        unet.update(TINY_UNETS[arch])
        vae.update(TINY_VAE)
        text_l.update(TINY_TEXT)
        text_g.update(TINY_TEXT, projection_dim=32)
    parts = {"unet": UNet2DConditionModel(**unet),
             "vae": AutoencoderKL(**vae, scaling_factor=0.13025 if arch == "sdxl" else 0.18215),
             "text_encoder": CLIPTextModel(CLIPTextConfig(**text_l))}
    if arch == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**text_g))
    return parts


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arch", choices=sorted(ARCHS))
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--count", action="store_true", help="print parameter counts and exit (no weights made)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths: the same code path, for a CPU check")
    args = ap.parse_args()
    if args.count:
        # parameters on the meta device: no memory, no compute (and, unlike accelerate's
        # init_empty_weights under transformers 5, T5's tied input embedding is counted once)
        with torch.device("meta"):
            parts = components(args.arch, args.tiny)
        for name, module in parts.items():
            print(f"{name:15s} {sum(p.numel() for p in module.parameters()) / 1e6:9.1f} M parameters")
        return
    if not args.folder:
        ap.error("folder is required unless --count")
    if args.arch == "flux":
        build_flux(args.folder, args.tiny)
        return
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from pipeline.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    with torch.device(device):
        parts = components(args.arch, args.tiny)
    parts["scheduler"] = scheduler(args.arch)
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(Path(tmp))
    if args.arch == "sdxl":
        pipe = StableDiffusionXLPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer, **parts)
    else:
        pipe = StableDiffusionPipeline(tokenizer=tokenizer, safety_checker=None, feature_extractor=None,
                                       requires_safety_checker=False, **parts)
    pipe.to(torch.float16).save_pretrained(args.folder)
    print(f"saved {args.arch}{' (tiny)' if args.tiny else ''} (random weights, fp16) to {args.folder} "
          f"on {device} in {time.perf_counter() - t0:.1f} s")


@contextmanager
def default_dtype(dtype):
    import torch

    before = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def build_flux(folder: str, tiny: bool) -> None:
    """Every parameter is made in bfloat16 where it will live (never a float32 copy, never the
    host's memory): the modules are built under the device and dtype as defaults, and their own
    initialisers fill them there."""
    import torch
    from diffusers import FluxPipeline

    from pipeline.models.tokenizer import build_clip_tokenizer, build_t5_tokenizer

    device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu" and not tiny:
        sys.exit("flux: 16.7B parameters are built on a GPU only; use --tiny (or --count) on a CPU")
    torch.manual_seed(0)
    t0 = time.perf_counter()
    with torch.device(device), default_dtype(torch.bfloat16):
        parts = flux_components(tiny)
    parts["scheduler"] = scheduler("flux")
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer = build_clip_tokenizer(Path(tmp) / "clip")
        tokenizer_2 = build_t5_tokenizer(Path(tmp) / "t5")
    pipe = FluxPipeline(tokenizer=tokenizer, tokenizer_2=tokenizer_2, **parts)
    built = time.perf_counter() - t0
    pipe.save_pretrained(folder)  # safetensors, the transformer in shards
    print(f"saved flux{' (tiny)' if tiny else ''} (random weights, bf16) to {folder} on {device}: "
          f"built in {built:.1f} s, saved in {time.perf_counter() - t0 - built:.1f} s")


if __name__ == "__main__":
    main()
