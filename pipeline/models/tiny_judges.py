"""The embedded judges: `tiny-clip` (an open_clip ViT CLIP), `tiny-nsfw` (a ViT image classifier
folder) and `tiny-clip-head` (a linear moderation head over tiny-clip's embedding). Untrained,
calibrated so that scores vary by image without rejecting everything (see embedded.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.models.tiny_unet import SEED

HEAD_WEIGHTS = "head.safetensors"
CLIP_ARCH = "asset-pipeline-tiny-clip"  # open_clip registry name of the tiny-clip config
CLIP_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "patch_size": 8, "width": 32, "layers": 2, "head_width": 16},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
CLIP_WEIGHTS = "open_clip_model.safetensors"


def build_tiny_clip(folder: Path) -> None:
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


def build_tiny_nsfw(folder: Path) -> None:
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


def build_tiny_clip_head(folder: Path) -> None:
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

