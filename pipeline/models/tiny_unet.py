"""The embedded UNet families: `tiny-sd` (Stable Diffusion 1.x layout) and `tiny-sdxl` (two text
encoders, micro-conditioning). Tiny and untrained, but the real classes, configs' shape and
folder layout, built under a fixed seed and saved with `save_pretrained` (see embedded.py).
"""

from __future__ import annotations

from pathlib import Path

SEED = 20240601  # every embedded build draws its random weights from this seed

def _tiny_vae():
    """Four blocks → three downsamples → VAE scale factor 8, as in real SD and SDXL."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, latent_channels=4,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
    )


# The tiny text encoders' config (CLIP-L's vocabulary and special tokens, 32 wide).
TINY_TEXT = dict(vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=2, max_position_embeddings=77, projection_dim=32,
                 bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


def _tiny_scheduler():
    """SD 1.x/2.x betas; "trailing" spacing suits the few-step regime (as SD-turbo does)."""
    from diffusers import EulerDiscreteScheduler

    return EulerDiscreteScheduler(
        num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012,
        beta_schedule="scaled_linear", timestep_spacing="trailing", steps_offset=1,
        prediction_type="epsilon",
    )


def sd_unet():
    """tiny-sd's UNet (SD 1.x blocks, 32-wide cross-attention), drawn from the current RNG state.
    The builds seed before calling it, so a recipe built from it (the ControlNet, the
    IP-Adapter's layout) gets exactly tiny-sd's weights."""
    from diffusers import UNet2DConditionModel

    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32, attention_head_dim=8,
    )


def sdxl_unet():
    """tiny-sdxl's UNet (SDXL's `text_time` micro-conditioning, 64-wide cross-attention), drawn
    from the current RNG state like `sd_unet`."""
    from diffusers import UNet2DConditionModel

    time_dim = 8
    return UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), norm_num_groups=32,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64,
        transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
        addition_time_embed_dim=time_dim,
        # six size/crop numbers, each embedded to time_dim, plus the pooled text projection
        projection_class_embeddings_input_dim=6 * time_dim + TINY_TEXT["projection_dim"],
    )


def build_tiny_sd(folder: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.models.tokenizer import build_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = sd_unet()
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    # vocab.json + merges.txt stay beside the tokenizer.json that save_pretrained adds.
    tokenizer = build_clip_tokenizer(folder / "tokenizer", model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_sdxl(folder: Path) -> None:
    """A Stable Diffusion XL pipeline: a UNet with SDXL's `text_time` micro-conditioning, a
    CLIPTextModel and a CLIPTextModelWithProjection whose penultimate states are concatenated
    (32 + 32 = the UNet's cross-attention width) and whose pooled projection feeds the time
    embedding, and `force_zeros_for_empty_prompt` as in SDXL base: an absent negative prompt
    is a zero embedding, an empty one is an encoded "" (the two differ)."""
    import torch
    from diffusers import StableDiffusionXLPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.tokenizer import build_clip_tokenizer

    text = TINY_TEXT
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = sdxl_unet()
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(CLIPTextConfig(**text))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**text, hidden_act="gelu"))
    tokenizer = build_clip_tokenizer(folder / "tokenizer", model_max_length=77)
    tokenizer_2 = build_clip_tokenizer(folder / "tokenizer_2", model_max_length=77)
    pipe = StableDiffusionXLPipeline(
        vae=vae, text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_tiny_scheduler(),
        force_zeros_for_empty_prompt=True, add_watermarker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)

