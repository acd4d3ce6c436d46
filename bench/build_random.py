"""Full-size diffusion architectures with random weights, for GPU benchmarks without downloads.

    .venv/bin/python bench/build_random.py sd15 /tmp/models/sd15-random      # UNet 860M, 512 px
    .venv/bin/python bench/build_random.py sdxl /tmp/models/sdxl-random      # UNet 2.6B, 1024 px
    .venv/bin/python bench/build_random.py sdxl --count                     # parameter counts only
    .venv/bin/python bench/build_random.py sd15 /tmp/tiny-sd15 --tiny        # same code, tiny widths (CPU check)

The compute of a forward pass does not depend on the weights' values, so these give real
timings. Saved with `save_pretrained` (fp16 safetensors) and loaded by the pipeline as a local
folder: `[models] diffusion = "/tmp/models/sd15-random"`. Built on the GPU when there is one.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
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


def components(arch: str, tiny: bool = False):
    from diffusers import AutoencoderKL, EulerDiscreteScheduler, UNet2DConditionModel
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
             "text_encoder": CLIPTextModel(CLIPTextConfig(**text_l)),
             "scheduler": EulerDiscreteScheduler(**SD_BETAS)}
    if arch == "sdxl":
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**text_g))
    return parts


def main() -> None:
    import torch

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("arch", choices=sorted(UNETS))
    ap.add_argument("folder", nargs="?")
    ap.add_argument("--count", action="store_true", help="print parameter counts and exit (no weights made)")
    ap.add_argument("--tiny", action="store_true", help="tiny widths: the same code path, for a CPU check")
    args = ap.parse_args()
    if args.count:
        from accelerate import init_empty_weights

        with init_empty_weights():  # parameters on the meta device: no memory, no compute
            parts = components(args.arch, args.tiny)
        for name, module in parts.items():
            if hasattr(module, "parameters"):
                print(f"{name:15s} {sum(p.numel() for p in module.parameters()) / 1e6:9.1f} M parameters")
        return
    if not args.folder:
        ap.error("folder is required unless --count")
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    from pipeline.models.tokenizer import build_clip_tokenizer

    torch.manual_seed(0)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    t0 = time.perf_counter()
    with torch.device(device):
        parts = components(args.arch, args.tiny)
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


if __name__ == "__main__":
    main()
