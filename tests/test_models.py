"""Model layer: offline tokenizer, deterministic embedded builds, loading, tiny generation."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.errors import ModelLoadError
from pipeline.models import embedded
from pipeline.models.classifiers import load_image_classifier
from pipeline.models.clip import load_clip
from pipeline.models.diffusion import load_diffusion
from pipeline.models.loading import resolve_device, resolve_dtype
from pipeline.models.tokenizer import build_clip_tokenizer

PROMPTS = [
    "a photo of a red leather shoe on a white table",
    "白い背景の赤い靴、スタジオ写真",
    "Größe, Übermaß und Straße — ÄÖÜ",
    "sneaker 👟🔥 on fire!! it's GREAT, 1,234.5 cm",
]


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def sd():
    return load_diffusion("embedded:tiny-sd", revision=None, scheduler=None,
                          device="cpu", dtype=torch.float32)


def _generators(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def test_tokenizer_matches_open_clip(tmp_path):
    from open_clip.tokenizer import SimpleTokenizer

    hf = build_clip_tokenizer(tmp_path)
    oc = SimpleTokenizer()
    assert len(hf) == 49408
    for prompt in PROMPTS:
        assert hf(prompt).input_ids == [oc.sot_token_id, *oc.encode(prompt), oc.eot_token_id]
    long = hf("word " * 200, truncation=True, max_length=77).input_ids
    assert len(long) == 77 and long[-1] == oc.eot_token_id


@pytest.mark.parametrize("name", ["tiny-sd", "tiny-sdxl", "tiny-clip", "tiny-nsfw"])
def test_build_is_deterministic(tmp_path, name):
    embedded.build(name, tmp_path / "a")
    embedded.build(name, tmp_path / "b")
    a, b = _digests(tmp_path / "a"), _digests(tmp_path / "b")
    assert any(f.endswith(".safetensors") for f in a)
    assert not any(f.endswith((".bin", ".pt", ".pth", ".pkl")) for f in a)
    assert a == b


def test_ensure_caches_and_loser_of_race_discards(tmp_path, monkeypatch):
    monkeypatch.setenv("ASSET_PIPELINE_MODELS", str(tmp_path))
    real_build = embedded.build
    final = tmp_path / f"tiny-nsfw-{embedded.recipe_tag('tiny-nsfw')}"

    def racing_build(name, folder):  # another process finishes first, mid-build
        real_build(name, tmp_path / "other")
        os.rename(tmp_path / "other", final)
        real_build(name, folder)

    monkeypatch.setattr(embedded, "build", racing_build)
    assert embedded.ensure("tiny-nsfw") == final
    assert [p.name for p in tmp_path.iterdir()] == [final.name]  # no temp folder left
    monkeypatch.setattr(embedded, "build", lambda *a: pytest.fail("rebuilt a cached model"))
    assert embedded.ensure("tiny-nsfw") == final
    with pytest.raises(ValueError, match="tiny-sd"):
        embedded.ensure("huge-sd")


def test_resolve_device_and_dtype():
    assert resolve_device("cpu") == "cpu"
    import torch

    assert resolve_device("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", "cpu") == torch.float32
    assert resolve_dtype("auto", "cuda:1") == torch.float16
    assert resolve_dtype("bfloat16", "cpu") == torch.bfloat16
    with pytest.raises(ValueError):
        resolve_dtype("int8", "cpu")


def test_diffusion_pipelines_share_weights(sd):
    assert sd.model_id == "embedded:tiny-sd" and sd.revision == embedded.recipe_tag("tiny-sd")
    assert sd.vae_scale_factor == 8 and sd.max_prompt_tokens == 77
    assert sd.scheduler_name == "EulerDiscreteScheduler"
    assert sd.img2img.unet is sd.t2i.unet and sd.inpaint.vae is sd.t2i.vae


def test_tiny_sdxl_loads_as_sdxl_with_all_three_modes():
    """The SDXL recipe loads through the same AutoPipeline calls as a real SDXL checkpoint,
    and image-to-image and inpainting derive from it sharing its weights."""
    xl = load_diffusion("embedded:tiny-sdxl", revision=None, scheduler=None, device="cpu",
                        dtype=torch.float32)
    assert type(xl.t2i).__name__ == "StableDiffusionXLPipeline"
    assert type(xl.img2img).__name__ == "StableDiffusionXLImg2ImgPipeline"
    assert type(xl.inpaint).__name__ == "StableDiffusionXLInpaintPipeline"
    assert xl.t2i.config.force_zeros_for_empty_prompt and xl.t2i.unet.config.addition_embed_type == "text_time"
    assert xl.inpaint.unet is xl.t2i.unet and xl.img2img.text_encoder_2 is xl.t2i.text_encoder_2
    assert xl.revision == embedded.recipe_tag("tiny-sdxl") and xl.vae_scale_factor == 8


def test_t2i_batch_matches_single(sd):
    kw = dict(num_inference_steps=2, guidance_scale=5.0, height=64, width=64, output_type="np")
    pair = sd.t2i(["a red shoe", "a blue bag"], generator=_generators(1, 2), **kw).images
    alone = sd.t2i(["a red shoe"], generator=_generators(1), **kw).images
    assert pair.shape == (2, 64, 64, 3)
    assert np.abs(pair[0] - alone[0]).max() <= 2 / 255
    assert np.abs(pair[0] - pair[1]).max() > 0.05  # different seeds, different images


def test_img2img_and_inpaint_run(sd):
    product = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    kw = dict(num_inference_steps=4, strength=0.75, output_type="np")
    out = sd.img2img(["a shoe"], image=product, generator=_generators(3), **kw).images
    assert out.shape == (1, 64, 64, 3)
    out = sd.inpaint(["a shoe"], image=product, mask_image=mask, height=64, width=64,
                     generator=_generators(3), **kw).images
    assert out.shape == (1, 64, 64, 3) and np.isfinite(out).all()


def test_scheduler_swap():
    name = "EulerAncestralDiscreteScheduler"
    sd = load_diffusion("embedded:tiny-sd", revision=None, scheduler=name, device="cpu",
                        dtype=torch.float32)
    assert sd.scheduler_name == name and sd.inpaint.scheduler is sd.t2i.scheduler
    with pytest.raises(ValueError, match="NoSuchScheduler"):
        load_diffusion("embedded:tiny-sd", revision=None, scheduler="NoSuchScheduler",
                       device="cpu", dtype=torch.float32)


def test_pickle_weights_are_refused(tmp_path, sd):
    sd.t2i.save_pretrained(tmp_path / "sd", safe_serialization=False)
    assert [p.name for p in (tmp_path / "sd" / "unet").glob("*.bin")]  # unet + vae as pickle
    assert not list((tmp_path / "sd" / "unet").glob("*.safetensors"))
    with pytest.raises(ModelLoadError):
        load_diffusion(str(tmp_path / "sd"), revision=None, scheduler=None,
                       device="cpu", dtype=torch.float32)
    # transformers 5 only writes safetensors, so write the pickle by hand.
    net = load_image_classifier("embedded:tiny-nsfw", device="cpu").model
    net.config.save_pretrained(tmp_path / "nsfw")
    torch.save(net.state_dict(), tmp_path / "nsfw" / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="nsfw"):
        load_image_classifier(str(tmp_path / "nsfw"), device="cpu")


def test_uncached_hub_id_fails_clearly():
    with pytest.raises(ModelLoadError, match="nothing is downloaded"):
        load_image_classifier("no-such-org/no-such-model", device="cpu")


def test_loaders_for_clip_and_classifier():
    clip = load_clip("embedded:tiny-clip", None, device="cpu")
    assert clip.model_id == "embedded:tiny-clip"
    assert tuple(clip.tokenizer(["a shoe"]).shape) == (1, 77)
    cls = load_image_classifier("embedded:tiny-nsfw", device="cpu")
    assert cls.id2label == {0: "normal", 1: "nsfw"} and not cls.model.training
    with pytest.raises(ModelLoadError, match="safetensors"):
        load_clip("ViT-B-32", str(Path(__file__)), device="cpu")  # not safetensors
