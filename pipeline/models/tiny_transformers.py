"""The embedded diffusion-transformer families: `tiny-flux` (FLUX.1-dev: distilled guidance),
`tiny-flux-schnell` (FLUX.1-schnell: no guidance) and `tiny-sd3` (Stable Diffusion 3.5).

The real pipeline classes and the real configs shrunk to tiny widths and one or two layers: a
16-channel VAE with FLUX's / SD3's scaling and shift, a flow-matching scheduler, CLIP text
encoders beside a T5 encoder, and the T5 tokenizer of `tokenizer.py`. Built under the fixed seed
and saved with `save_pretrained` (see embedded.py), so they load through the same
`AutoPipelineForText2Image.from_pretrained` call as black-forest-labs/FLUX.1-dev or
stabilityai/stable-diffusion-3.5-large.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.tiny_unet import SEED, TINY_TEXT

# T5 v1.1 XXL (FLUX's and SD3's text_encoder) shrunk: 24 layers × 4096 → 2 × 64.
TINY_T5 = dict(vocab_size=32128, d_model=64, d_kv=16, d_ff=128, num_layers=2, num_heads=4,
               relative_attention_num_buckets=32, relative_attention_max_distance=128,
               feed_forward_proj="gated-gelu", dense_act_fn="gelu_new", is_gated_act=True,
               layer_norm_epsilon=1e-6, tie_word_embeddings=False, pad_token_id=0, eos_token_id=1,
               decoder_start_token_id=0)

# The schedulers' configs as the real checkpoints ship them.
FLUX_DEV_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                          max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
FLUX_SCHNELL_SCHEDULER = dict(num_train_timesteps=1000, shift=1.0, use_dynamic_shifting=False)
SD3_SCHEDULER = dict(num_train_timesteps=1000, shift=3.0)

# The VAEs' latent scaling (the architecture is the same: 16 latent channels, no quant convs).
FLUX_VAE_SCALING = dict(scaling_factor=0.3611, shift_factor=0.1159)
SD3_VAE_SCALING = dict(scaling_factor=1.5305, shift_factor=0.0609)


def _tiny_vae16(scaling: dict):
    """FLUX's and SD3's VAE: four blocks (scale factor 8), 16 latent channels, no quant convs."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        sample_size=64, in_channels=3, out_channels=3, latent_channels=16,
        block_out_channels=(8, 16, 16, 16), layers_per_block=1, norm_num_groups=8,
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        use_quant_conv=False, use_post_quant_conv=False, **scaling,
    )


def _t5():
    from transformers import T5Config, T5EncoderModel

    return T5EncoderModel(T5Config(**TINY_T5))


def build_tiny_flux(folder: Path, guidance_embeds: bool = True) -> None:
    """FLUX.1: CLIP-L's pooled output and T5's states condition a FluxTransformer2DModel over
    2×2-packed latents (64 = 16 channels × 4). FLUX.1-dev embeds the guidance scale (a distilled
    guidance, one pass per step); schnell (`guidance_embeds=False`) has none."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.models.tokenizer import build_clip_tokenizer, build_t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        # real: 19 double + 38 single blocks, 24 heads × 128, rope axes (16, 56, 56)
        transformer = FluxTransformer2DModel(
            patch_size=1, in_channels=64, num_layers=1, num_single_layers=2, attention_head_dim=16,
            num_attention_heads=2, joint_attention_dim=TINY_T5["d_model"],
            pooled_projection_dim=TINY_TEXT["hidden_size"], guidance_embeds=guidance_embeds,
            axes_dims_rope=(4, 6, 6),
        )
        vae = _tiny_vae16(FLUX_VAE_SCALING)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT, hidden_act="quick_gelu"))
        text_encoder_2 = _t5()
    scheduler = FlowMatchEulerDiscreteScheduler(
        **(FLUX_DEV_SCHEDULER if guidance_embeds else FLUX_SCHNELL_SCHEDULER))
    pipe = FluxPipeline(
        scheduler=scheduler, vae=vae, text_encoder=text_encoder,
        tokenizer=build_clip_tokenizer(folder / "tokenizer", model_max_length=77),
        text_encoder_2=text_encoder_2, tokenizer_2=build_t5_tokenizer(folder / "tokenizer_2"),
        transformer=transformer,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def build_tiny_flux_schnell(folder: Path) -> None:
    build_tiny_flux(folder, guidance_embeds=False)


def build_tiny_sd3(folder: Path) -> None:
    """Stable Diffusion 3.5: CLIP-L and CLIP-G (penultimate states concatenated, zero-padded to
    T5's width, then T5's states after them; their projections concatenated as the pooled
    embedding) condition an SD3Transformer2DModel (MMDiT, 2×2 patches, RMS q/k norm)."""
    import torch
    from diffusers import FlowMatchEulerDiscreteScheduler, SD3Transformer2DModel, StableDiffusion3Pipeline
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    from pipeline.models.tokenizer import build_clip_tokenizer, build_t5_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        # real (3.5 large): 38 layers, 38 heads × 64, caption projection 2432, pooled 2048 = 768 + 1280
        transformer = SD3Transformer2DModel(
            sample_size=8, patch_size=2, in_channels=16, out_channels=16, num_layers=2,
            attention_head_dim=16, num_attention_heads=2, joint_attention_dim=TINY_T5["d_model"],
            caption_projection_dim=32, pooled_projection_dim=2 * TINY_TEXT["projection_dim"],
            pos_embed_max_size=32, qk_norm="rms_norm",
        )
        vae = _tiny_vae16(SD3_VAE_SCALING)
        text_encoder = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT, hidden_act="quick_gelu"))
        text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_TEXT, hidden_act="gelu"))
        text_encoder_3 = _t5()
    pipe = StableDiffusion3Pipeline(
        scheduler=FlowMatchEulerDiscreteScheduler(**SD3_SCHEDULER), vae=vae, transformer=transformer,
        text_encoder=text_encoder, tokenizer=build_clip_tokenizer(folder / "tokenizer", model_max_length=77),
        text_encoder_2=text_encoder_2,
        tokenizer_2=build_clip_tokenizer(folder / "tokenizer_2", model_max_length=77),
        text_encoder_3=text_encoder_3, tokenizer_3=build_t5_tokenizer(folder / "tokenizer_3"),
    )
    pipe.save_pretrained(folder, safe_serialization=True)
