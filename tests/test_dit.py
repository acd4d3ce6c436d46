"""The diffusion-transformer families (FLUX.1-dev, FLUX.1-schnell, SD3) on their embedded tiny
models: they load through `load_diffusion` as real checkpoints do, run every mode, keep a
candidate's pixels independent of its batch, and their family descriptors say what diffusers
really does with guidance, negative prompts and each text encoder's window."""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.models import embedded, families
from pipeline.models.diffusion import load_diffusion
from pipeline.models.tokenizer import build_t5_tokenizer

DIT = ("tiny-flux", "tiny-flux-schnell", "tiny-sd3")
MODES = ("t2i", "img2img", "inpaint")
KW = dict(num_inference_steps=2, height=64, width=64, output_type="np")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on shared cores OpenMP's waiting
    threads make every call 30x slower (2 s instead of 60 ms for a FLUX step pair here)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def load():
    """name → its DiffusionPipelines, each loaded once per session."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_diffusion(f"embedded:{name}", revision=None, scheduler=None, device="cpu",
                                         dtype=torch.float32)
        return cache[name]

    return get


@pytest.fixture(scope="session")
def product():
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    return image, mask


def generate(pipes, mode, prompts, seeds, product=None, **kw):
    """uint8 images, one CPU generator per candidate as the generate stage makes them. Every
    mode gets width and height: FLUX's and SD3's img2img default to 1024 px otherwise."""
    args = {**KW, "guidance_scale": 4.0, **kw}
    if mode != "t2i":
        args.update(image=[product[0]] * len(prompts), strength=0.75)
    if mode == "inpaint":
        args["mask_image"] = [product[1]] * len(prompts)
    generators = [torch.Generator("cpu").manual_seed(s) for s in seeds]
    with torch.inference_mode():
        images = getattr(pipes, mode)(list(prompts), generator=generators, **args).images
    return np.clip(np.rint(np.asarray(images) * 255), 0, 255).astype(int)


def test_t5_tokenizer_has_t5s_layout_and_reloads_from_files(tmp_path):
    tok = build_t5_tokenizer(tmp_path)
    assert type(tok).__name__ == "T5Tokenizer" and sorted(p.name for p in tmp_path.iterdir()) == [
        "tokenizer.json", "tokenizer_config.json"]
    assert len(tok) == 32100 and tok.model_max_length == 512
    assert (tok.pad_token_id, tok.eos_token_id, tok.unk_token_id) == (0, 1, 2)
    assert tok.convert_tokens_to_ids("<extra_id_0>") == 32099
    ids = tok("a photo of a red leather shoe").input_ids
    assert tok.convert_ids_to_tokens(ids) == ["▁a", "▁photo", "▁of", "▁a", "▁red", "▁leather", "▁shoe", "</s>"]
    assert tok("白い靴").input_ids.count(tok.unk_token_id) >= 1  # as T5: most non-Latin scripts are unknown
    cut = tok("word " * 600, truncation=True, max_length=512).input_ids
    assert len(cut) == 512 and cut[-1] == tok.eos_token_id


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_build_is_deterministic(tmp_path, name):
    def digests(folder):
        return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
                for p in sorted(folder.rglob("*")) if p.is_file()}

    embedded.build(name, tmp_path / "a")
    embedded.build(name, tmp_path / "b")
    a = digests(tmp_path / "a")
    assert any(f.endswith(".safetensors") for f in a) and not any(f.endswith((".bin", ".pt")) for f in a)
    assert a == digests(tmp_path / "b")


@pytest.mark.parametrize("name, classes, guidance", [
    ("tiny-flux", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"), families.DISTILLED),
    ("tiny-flux-schnell", ("FluxPipeline", "FluxImg2ImgPipeline", "FluxInpaintPipeline"), families.NO_GUIDANCE),
    ("tiny-sd3", ("StableDiffusion3Pipeline", "StableDiffusion3Img2ImgPipeline",
                  "StableDiffusion3InpaintPipeline"), families.CFG),
])
def test_loads_as_the_real_pipelines_sharing_one_set_of_weights(load, name, classes, guidance):
    pipes = load(name)
    assert tuple(type(getattr(pipes, m)).__name__ for m in MODES) == classes
    assert pipes.img2img.transformer is pipes.t2i.transformer and pipes.inpaint.vae is pipes.t2i.vae
    assert pipes.t2i.vae.config.latent_channels == 16 and pipes.vae_scale_factor == 8
    assert pipes.scheduler_name == "FlowMatchEulerDiscreteScheduler" and pipes.max_prompt_tokens == 77
    assert pipes.family.guidance == guidance and pipes.family.modes == MODES
    assert pipes.family == families.describe_folder(embedded.ensure(name))  # the same without torch


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", DIT)
def test_candidate_pixels_do_not_depend_on_the_batch(load, product, name, mode):
    """Alone or beside two other prompts (one long enough to be truncated) and seeds, a
    candidate's image is the same; the same seed gives the same pixels, another seed others."""
    pipes = load(name)
    prompts = ["a red shoe", "a blue leather bag on a wooden table, studio light, " * 8, "a mug"]
    batch = generate(pipes, mode, prompts, [1, 2, 3], product)
    alone = generate(pipes, mode, prompts[:1], [1], product)
    assert batch.shape == (3, 64, 64, 3)
    assert np.abs(batch[0] - alone[0]).max() <= 2
    assert np.abs(batch[0] - batch[2]).max() > 20
    if mode == "t2i":
        assert (generate(pipes, mode, prompts[:1], [1], product) == alone).all()


def test_flux_dev_guidance_is_distilled_and_schnell_has_none(load):
    """FLUX-dev embeds guidance_scale in the transformer (it changes the image in one pass);
    schnell has no such input and diffusers ignores the argument without a word."""
    dev, schnell = load("tiny-flux"), load("tiny-flux-schnell")
    assert np.abs(generate(dev, "t2i", ["a shoe"], [5], guidance_scale=1.0)
                  - generate(dev, "t2i", ["a shoe"], [5], guidance_scale=6.0)).max() > 5
    assert (generate(schnell, "t2i", ["a shoe"], [5], guidance_scale=1.0)
            == generate(schnell, "t2i", ["a shoe"], [5], guidance_scale=6.0)).all()


@pytest.mark.parametrize("name", DIT)
def test_negative_prompt_counts_only_with_the_familys_scale_above_one(load, name):
    """SD3 reads a negative prompt whenever guidance_scale > 1; FLUX only with
    true_cfg_scale > 1 (a second pass per step), and ignores it silently otherwise."""
    pipes = load(name)
    scale = pipes.family.negative_scale
    assert all(scale in inspect.signature(getattr(pipes, m).__call__).parameters for m in MODES)
    none = generate(pipes, "t2i", ["a shoe"], [5], **{scale: 4.0})
    negative = generate(pipes, "t2i", ["a shoe"], [5], negative_prompt=["blurry"], **{scale: 4.0})
    assert np.abs(none - negative).max() > 5
    if scale == "true_cfg_scale":
        ignored = generate(pipes, "t2i", ["a shoe"], [5], negative_prompt=["blurry"])
        assert (ignored == generate(pipes, "t2i", ["a shoe"], [5])).all()


def _embeddings(pipe, prompt: str) -> dict[str, tuple[torch.Tensor, ...]]:
    """Text encoder name → what of the pipeline's own prompt encoding comes from it."""
    with torch.inference_mode():
        if families.describe(pipe).name == families.FLUX:
            t5, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, device="cpu")
            return {"text_encoder": (pooled,), "text_encoder_2": (t5,)}
        embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompt, prompt_2=None, prompt_3=None, device="cpu",
                                                  do_classifier_free_guidance=False)
    clip, t5, half = embeds[:, :77], embeds[:, 77:], pipe.text_encoder.config.hidden_size
    return {"text_encoder": (clip[..., :half], pooled[:, :half]),
            "text_encoder_2": (clip[..., half:2 * half], pooled[:, half:]), "text_encoder_3": (t5,)}


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_each_encoder_window_is_where_the_pipeline_cuts(load, name):
    """A word added to a prompt changes an encoder's embedding exactly when `truncated_by` says
    that encoder did not cut the prompt: the windows are the ones diffusers applies."""
    pipe, family = load(name).t2i, load(name).family
    assert family.windows == {"flux": {"text_encoder": 77, "text_encoder_2": 512},
                              "sd3": {"text_encoder": 77, "text_encoder_2": 77, "text_encoder_3": 256}}[family.name]
    prompts = ["a red shoe", "word " * 100, "word " * 300, "word " * 600]
    cut = families.truncated_by(family, families.count_tokens(pipe, family, prompts))
    assert cut[0] == () and set(cut[3]) == set(family.windows)
    for prompt, cut_by in zip(prompts, cut, strict=True):
        before, after = _embeddings(pipe, prompt), _embeddings(pipe, prompt + " cat")
        for enc in family.windows:
            same = all(torch.equal(a, b) for a, b in zip(before[enc], after[enc], strict=True))
            assert same == (enc in cut_by), (prompt[:20], enc)


def test_families_agree_with_diffusers():
    """The family tables hold what diffusers 0.42's AutoPipelines and signatures say."""
    import diffusers
    from diffusers.pipelines.auto_pipeline import (
        AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
        AUTO_INPAINT_PIPELINES_MAPPING,
        AUTO_TEXT2IMAGE_PIPELINES_MAPPING,
    )

    for cls_name, family in families.CLASS_FAMILIES.items():
        params = inspect.signature(getattr(diffusers, cls_name).__call__).parameters
        assert families.NEGATIVE_SCALE[family] in params and "negative_prompt" in params
        if family in families.MAX_SEQUENCE_LENGTH:
            assert params["max_sequence_length"].default == families.MAX_SEQUENCE_LENGTH[family]
    mappings = {"t2i": AUTO_TEXT2IMAGE_PIPELINES_MAPPING, "img2img": AUTO_IMAGE2IMAGE_PIPELINES_MAPPING,
                "inpaint": AUTO_INPAINT_PIPELINES_MAPPING}
    for key in ("stable-diffusion", "stable-diffusion-xl", "flux", "stable-diffusion-3"):
        family = families.family_name(AUTO_TEXT2IMAGE_PIPELINES_MAPPING[key].__name__)
        has = tuple(m for m, mapping in mappings.items() if key in mapping)
        assert has == families.MODES[family]
        assert all(families.family_name(mappings[m][key].__name__) == family for m in has)
    assert families.family_name("KandinskyV22Pipeline") is None


@pytest.mark.parametrize("name, family, windows", [
    ("tiny-sd", "sd", {"text_encoder": 77}),
    ("tiny-sdxl", "sdxl", {"text_encoder": 77, "text_encoder_2": 77}),
])
def test_unet_families_are_described_from_their_folders(name, family, windows):
    described = families.describe_folder(embedded.ensure(name))
    assert (described.name, described.guidance, described.negative_scale) == (family, families.CFG, "guidance_scale")
    assert described.windows == windows


def test_schnells_shorter_t5_window_is_the_callers_choice(load, tmp_path):
    """diffusers' FLUX default is 512 tokens for dev and schnell alike; schnell was trained with
    256, which a caller passes as max_sequence_length and the descriptor then reports."""
    pipe = load("tiny-flux-schnell").t2i
    assert families.describe(pipe).windows["text_encoder_2"] == 512
    short = families.describe(pipe, max_sequence_length=256)
    counts = families.count_tokens(pipe, short, ["word " * 300])
    assert families.truncated_by(short, counts) == [("text_encoder", "text_encoder_2")]
    assert families.describe_folder(tmp_path) is None  # not a model folder


@pytest.mark.parametrize("name", ["tiny-flux", "tiny-sd3"])
def test_lora_loads_scales_and_unloads(load, tmp_path, name):
    """A transformer LoRA in diffusers' format loads with `load_lora_weights` as the generate
    stage loads one; its scale matters; every mode sees it (one shared transformer); turning it
    off gives the base pixels back."""
    from tests.helpers import make_transformer_lora

    lora = make_transformer_lora(tmp_path / name, name, scale=2.0)
    pipes = load(name)
    pipe = pipes.t2i
    base = generate(pipes, "t2i", ["a shoe"], [5])
    pipe.load_lora_weights(str(lora.parent), weight_name=lora.name, adapter_name="style", use_safetensors=True)
    try:
        pipe.set_adapters(["style"], [1.0])
        full = generate(pipes, "t2i", ["a shoe"], [5])
        pipe.set_adapters(["style"], [0.5])
        half = generate(pipes, "t2i", ["a shoe"], [5])
        assert np.abs(full - base).max() > 10 and np.abs(half - base).max() > 2 and np.abs(full - half).max() > 2
        assert "style" in pipes.img2img.transformer.peft_config
        pipe.disable_lora()
        assert (generate(pipes, "t2i", ["a shoe"], [5]) == base).all()
    finally:
        pipe.unload_lora_weights()
    assert (generate(pipes, "t2i", ["a shoe"], [5]) == base).all()
