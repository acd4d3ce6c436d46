"""The embedded default models: tiny, untrained, but the real architectures and file layouts.

`embedded:tiny-sd` is a Stable Diffusion pipeline folder, `embedded:tiny-sdxl` an SDXL one (two
text encoders, micro-conditioning; for tests of what SDXL does differently), `embedded:tiny-clip`
an open_clip config + safetensors file, `embedded:tiny-nsfw` a ViT image classifier folder. Each is built
from a config under a fixed seed, saved with safetensors, and loaded back through the same
`from_pretrained` / `create_model` calls as SD-turbo, ViT-L-14 or an NSFW ViT classifier, so
a job runs end to end offline and a real checkpoint is a one-line change of the job file.

Builds are cached under `$ASSET_PIPELINE_MODELS` (default `~/.cache/asset-pipeline/models`) in
a folder named with the recipe's version tag: change a recipe, bump its version.
`python -m pipeline.models.embedded` builds them all and prints where.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

SEED = 20240601
# name → recipe version; bump a version whenever that build function changes.
VERSIONS = {"tiny-sd": 1, "tiny-sdxl": 1, "tiny-clip": 1, "tiny-nsfw": 1, "tiny-clip-head": 1}
# name → the [models] key it serves: what the job spec admits as `embedded:<name>` there.
ROLES = {"tiny-sd": "diffusion", "tiny-sdxl": "diffusion", "tiny-clip": "clip", "tiny-nsfw": "moderation",
         "tiny-clip-head": "moderation"}
HEAD_WEIGHTS = "head.safetensors"
CLIP_ARCH = "asset-pipeline-tiny-clip"  # open_clip registry name of the tiny-clip config
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLIP_WEIGHTS = "open_clip_model.safetensors"


def cache_root() -> Path:
    return Path(os.environ.get("ASSET_PIPELINE_MODELS")
                or Path.home() / ".cache" / "asset-pipeline" / "models")


def recipe_tag(name: str) -> str:
    """`v<N>`: the version of the build recipe (part of the cache folder name)."""
    if name not in VERSIONS:
        raise ValueError(f"unknown embedded model {name!r} (known: {', '.join(VERSIONS)})")
    return f"v{VERSIONS[name]}"


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


def _build_tiny_sd(folder: Path) -> None:
    import torch
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from pipeline.models.tokenizer import build_clip_tokenizer

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=32,
            down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
            cross_attention_dim=32, attention_head_dim=8,
        )
        vae = _tiny_vae()
        text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    # vocab.json + merges.txt stay beside the tokenizer.json that save_pretrained adds.
    tokenizer = build_clip_tokenizer(folder / "tokenizer", model_max_length=77)
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=_tiny_scheduler(),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


def _build_tiny_sdxl(folder: Path) -> None:
    """A Stable Diffusion XL pipeline: a UNet with SDXL's `text_time` micro-conditioning, a
    CLIPTextModel and a CLIPTextModelWithProjection whose penultimate states are concatenated
    (32 + 32 = the UNet's cross-attention width) and whose pooled projection feeds the time
    embedding, and `force_zeros_for_empty_prompt` as in SDXL base: an absent negative prompt
    is a zero embedding, an empty one is an encoded "" (the two differ)."""
    import torch
    from diffusers import StableDiffusionXLPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    from pipeline.models.tokenizer import build_clip_tokenizer

    text = TINY_TEXT
    time_dim = 8
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        unet = UNet2DConditionModel(
            sample_size=8, in_channels=4, out_channels=4, layers_per_block=1,
            block_out_channels=(32, 64), norm_num_groups=32,
            down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
            up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
            attention_head_dim=(2, 4), use_linear_projection=True, cross_attention_dim=64,
            transformer_layers_per_block=(1, 2), addition_embed_type="text_time",
            addition_time_embed_dim=time_dim,
            # six size/crop numbers, each embedded to time_dim, plus the pooled text projection
            projection_class_embeddings_input_dim=6 * time_dim + text["projection_dim"],
        )
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


def _build_tiny_clip(folder: Path) -> None:
    """An open_clip ViT CLIP, untrained.

    Untrained towers give cosines of random sign, so most prompts would score 0 for every
    image. Both towers therefore get the same output projection and the same final LayerNorm
    bias: every embedding shares one component, and cosines are mostly positive while still
    varying with image and text.
    """
    import torch
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    # `create_model(CLIP_ARCH)` instantiates exactly this class from exactly this config.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = CLIP(**CLIP_CONFIG)
        shared_bias = torch.randn(CLIP_CONFIG["text_cfg"]["width"])
    with torch.no_grad():
        model.text_projection.copy_(model.visual.proj)
        model.ln_final.bias.copy_(shared_bias)
        model.visual.ln_post.bias.copy_(shared_bias)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(folder / CLIP_WEIGHTS))
    (folder / f"{CLIP_ARCH}.json").write_text(json.dumps(CLIP_CONFIG, indent=2) + "\n")


def _build_tiny_nsfw(folder: Path) -> None:
    """An untrained ViT classifier with labels {0: normal, 1: nsfw}, like Falconsai's.

    Untrained, its scores mean nothing, and its CLS feature has a large image-independent
    offset. So the head is calibrated on seeded noise and flat images: the nsfw − normal
    logit margin is `z − 6`, with `z` the centred, unit-variance projection of the feature
    (a bias of [+3, −3] on centred features). 'nsfw' probabilities are then low (≈ 0.0002
    to 0.02) for typical images, so the demo does not reject everything, yet vary by image.
    """
    import torch
    from transformers import ViTConfig, ViTForImageClassification, ViTImageProcessor

    config = ViTConfig(
        image_size=64, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, id2label={0: "normal", 1: "nsfw"}, label2id={"normal": 0, "nsfw": 1},
    )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        model = ViTForImageClassification(config).eval()
        flat = torch.tensor([-1.0, 0.0, 1.0]).view(3, 1, 1, 1).expand(3, 3, 64, 64)
        calibration = torch.cat([torch.rand(8, 3, 64, 64) * 2 - 1, flat])  # processor's range
        direction = torch.randn(config.hidden_size)
    with torch.no_grad():
        margin = model.vit(pixel_values=calibration).last_hidden_state[:, 0] @ direction
        # Rounded, so that last-bit float differences between CPUs give the same file.
        scale = round(1.0 / margin.std().item(), 3)
        offset = round(scale * margin.mean().item(), 3)
        model.classifier.weight.copy_(torch.stack([-direction, direction]) * scale / 2)
        model.classifier.bias.copy_(torch.tensor([3.0 + offset / 2, -3.0 - offset / 2]))
    model.save_pretrained(folder)  # safetensors (the only format transformers 5 writes)
    ViTImageProcessor(size={"height": 64, "width": 64}, image_mean=[0.5] * 3,
                      image_std=[0.5] * 3).save_pretrained(folder)


def _build_tiny_clip_head(folder: Path) -> None:
    """A linear moderation head over tiny-clip's normalised image embedding: labels
    {normal, nsfw}, the format `models.classifiers.load_embedding_head` reads (a real one would be trained
    on CLIP embeddings, as NeMo Curator's and LAION's safety heads are). Untrained: a seeded
    direction with a bias of [+3, −3], so 'nsfw' scores are low yet vary by image."""
    import torch
    from safetensors.torch import save_file

    dim = CLIP_CONFIG["embed_dim"]
    gen = torch.Generator().manual_seed(SEED)
    direction = torch.randn(dim, generator=gen) * 2.0
    weight = torch.stack([-direction, direction]) / 2
    bias = torch.tensor([3.0, -3.0])
    save_file({"weight": weight.contiguous(), "bias": bias}, str(folder / HEAD_WEIGHTS),
              metadata={"labels": json.dumps(["normal", "nsfw"])})


_BUILDERS = {"tiny-sd": _build_tiny_sd, "tiny-sdxl": _build_tiny_sdxl, "tiny-clip": _build_tiny_clip,
             "tiny-nsfw": _build_tiny_nsfw, "tiny-clip-head": _build_tiny_clip_head}


def build(name: str, folder: Path) -> None:
    """Build embedded model `name` into `folder` (created if missing). Deterministic."""
    recipe_tag(name)  # validates the name
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _BUILDERS[name](folder)


def ensure(name: str) -> Path:
    """The cached folder of embedded model `name`, built on first use.

    Built whole beside the target and renamed into place (`pipeline.storage.write.atomic_folder`):
    a folder that exists is complete. When two processes race, the first rename wins and the
    loser drops its copy.
    """
    from pipeline.storage.write import atomic_folder

    final = cache_root() / f"{name}-{recipe_tag(name)}"
    if not final.is_dir():
        atomic_folder(final, lambda folder: build(name, folder))
    return final


if __name__ == "__main__":
    for n in VERSIONS:
        print(n, ensure(n))
