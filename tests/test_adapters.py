"""Adapters: the Canny edge map, the embedded IP-Adapter and ControlNet, and their loaders."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors import safe_open

from pipeline.errors import ModelLoadError
from pipeline.models import embedded
from pipeline.models.controlnet import load_controlnet
from pipeline.models.diffusion import load_diffusion
from pipeline.models.ip_adapter import embed_style_image, load_ip_adapter, style_embeds
from pipeline.stages.structure import canny_edges

# ---- the edge map ---------------------------------------------------------------------------
# A step of height c, blurred (sigma 1), has a Sobel magnitude of about 2.5 c across it: 255
# gives ~640, 60 gives ~150 (between the default thresholds 100 and 200), 20 gives ~50.


def _near(mask: np.ndarray, radius: int = 1) -> np.ndarray:
    """`mask` grown by `radius` pixels (8-connected)."""
    out = mask.copy()
    for _ in range(radius):
        padded = np.pad(out, 1)
        h, w = out.shape
        out = np.logical_or.reduce([padded[1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
                                    for dy in (-1, 0, 1) for dx in (-1, 0, 1)])
    return out


def _boundary(shape, top, left, bottom, right) -> np.ndarray:
    ring = np.zeros(shape, bool)
    ring[top:bottom, left:right] = True
    ring[top + 1:bottom - 1, left + 1:right - 1] = False
    return ring


def _components(mask: np.ndarray) -> int:
    """The number of 8-connected components, by flood fill (slow, for small test images)."""
    seen, count = np.zeros_like(mask), 0
    for start in zip(*np.nonzero(mask), strict=True):
        if seen[start]:
            continue
        count += 1
        stack = [start]
        while stack:
            y, x = stack.pop()
            if 0 <= y < mask.shape[0] and 0 <= x < mask.shape[1] and mask[y, x] and not seen[y, x]:
                seen[y, x] = True
                stack += [(y + dy, x + dx) for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return count


def test_filled_rectangle_gives_its_outline():
    img = np.zeros((64, 80, 3), np.uint8)
    img[16:48, 20:60] = 255
    out = canny_edges(img)
    assert out.shape == (64, 80, 3) and out.dtype == np.uint8
    assert set(np.unique(out)) == {0, 255} and (out == out[:, :, :1]).all()
    edges = out[:, :, 0] > 0
    ring = _boundary(edges.shape, 16, 20, 48, 60)
    assert not (edges & ~_near(ring)).any()  # nothing off the outline
    assert (ring <= _near(edges)).all()  # every point of the outline found
    assert _components(edges) == 1  # one closed line, one pixel wide
    assert edges.sum() <= 1.2 * ring.sum()
    # the same picture given as PIL, grey or with alpha gives the same map
    assert (canny_edges(Image.fromarray(img)) == out).all()
    assert (canny_edges(img[:, :, 0]) == out).all()
    assert (canny_edges(np.dstack([img, np.full(img.shape[:2], 7, np.uint8)])) == out).all()


@pytest.mark.parametrize("value", [0, 128, 255])
def test_flat_image_has_no_edges(value):
    assert not canny_edges(np.full((40, 50, 3), value, np.uint8)).any()


def test_thresholds_and_hysteresis():
    """A weak edge (contrast 60) is kept where it runs on from a strong one and dropped where
    alone; a contrast-20 edge is below the low threshold."""
    img = np.zeros((80, 180), np.uint8)
    fade = np.interp(np.arange(10, 70), [25, 45], [255, 60])  # strong at the top, weak below
    img[10:70, 20:60] = fade[:, None].round()
    img[20:60, 90:130] = 60  # weak square, alone
    img[20:60, 140:170] = 20  # faint square
    joined_bottom = _near(_boundary(img.shape, 10, 20, 70, 60)) & (np.arange(80) >= 60)[:, None]
    top = _near(_boundary(img.shape, 10, 20, 70, 60)) & (np.arange(80) < 12)[:, None]
    alone = _near(_boundary(img.shape, 20, 90, 60, 130))
    faint = _near(_boundary(img.shape, 20, 140, 60, 170))

    def found(**thresholds):
        edges = canny_edges(img, **thresholds)[:, :, 0] > 0
        return [bool(edges[region].any()) for region in (top, joined_bottom, alone, faint)]

    assert found() == [True, True, False, False]
    assert found(low=100, high=140) == [True, True, True, False]  # weak edges are strong now
    assert found(low=170, high=200) == [True, False, False, False]  # weak edges are below low
    assert found(low=20, high=40) == [True, True, True, True]
    assert found(low=900, high=1000) == [False] * 4  # above every gradient
    with pytest.raises(ValueError, match="low <= high"):
        canny_edges(img, low=200, high=100)


def test_hysteresis_follows_a_long_chain():
    """A weak chain snaking through the whole image is kept when one end is strong, and only
    the part still joined to it when the chain is cut."""
    from pipeline.stages.structure import _hysteresis

    n = 512
    weak = np.zeros((n, n), bool)
    weak[::2] = True  # rows joined alternately at the right and the left end
    weak[1::4, -1] = True
    weak[3::4, 0] = True
    strong = np.zeros_like(weak)
    strong[0, 0] = True
    assert (_hysteresis(weak, strong) == weak).all()
    weak[5, -1] = False  # cut between rows 4 and 6
    kept = _hysteresis(weak, strong)
    assert kept[:5].sum() == weak[:5].sum() and not kept[6:].any()


# ---- the embedded adapters and their loaders ------------------------------------------------

KW = dict(num_inference_steps=2, guidance_scale=5.0, output_type="np")
SIZE = dict(height=64, width=64)
MODES = ("t2i", "img2img", "inpaint")


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def _gen(*seeds: int) -> list[torch.Generator]:
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def _load(model: str):
    return load_diffusion(model, revision=None, scheduler=None, device="cpu", dtype=torch.float32)


def _picture(seed: int) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (64, 64, 3), np.uint8))


def _structure(shape: str) -> Image.Image:
    """The edge map of a white rectangle or disc on black, as a pipeline takes it."""
    yy, xx = np.mgrid[:64, :64]
    inside = (abs(yy - 32) < 14) & (abs(xx - 32) < 20) if shape == "box" else np.hypot(yy - 32, xx - 32) < 18
    return Image.fromarray(canny_edges((inside * 255).astype(np.uint8)))


PRODUCT, OTHER_STYLE = _picture(0), Image.new("RGB", (64, 64), (200, 30, 30))
MASK = Image.new("L", (64, 64), 0)
MASK.paste(255, (16, 16, 48, 48))


def _run(pipes, mode: str, prompts: list[str], seeds: list[int], **kw) -> np.ndarray:
    """One call of `mode`'s pipeline; a ControlNet's structure image is `structure=`."""
    structure = kw.pop("structure", None)
    if structure is not None:
        kw["image" if mode == "t2i" else "control_image"] = structure
    inputs = {"t2i": SIZE, "img2img": dict(image=PRODUCT, strength=0.75),
              "inpaint": dict(image=PRODUCT, mask_image=MASK, strength=0.75, **SIZE)}[mode]
    return getattr(pipes, mode)(prompts, generator=_gen(*seeds), **{**KW, **inputs, **kw}).images


def _differ(a: np.ndarray, b: np.ndarray) -> bool:
    return float(np.abs(a - b).max()) > 8 / 255


@pytest.mark.parametrize("name", ["tiny-ip-adapter", "tiny-controlnet"])
def test_adapter_build_is_deterministic(tmp_path, name):
    embedded.build(name, tmp_path)
    built = _digests(tmp_path)
    assert built == _digests(embedded.ensure(name))
    assert all(f.endswith((".json", ".safetensors")) for f in built)
    if name == "tiny-controlnet":
        assert sorted(built) == [f"{base}/{f}" for base in ("tiny-flux", "tiny-sd", "tiny-sd3", "tiny-sdxl")
                                 for f in ("config.json", "diffusion_pytorch_model.safetensors")]
        return
    assert {"image_encoder/config.json", "image_encoder/model.safetensors",
            "image_encoder/preprocessor_config.json"} < set(built)
    with safe_open(str(tmp_path / "ip-adapter_tiny-sd.safetensors"), "pt") as f:
        keys = set(f.keys())
    # h94's ip-adapter_sd15 layout: the projection, then to_k_ip / to_v_ip numbered over all
    # attention processors (tiny-sd has 7 cross-attentions: processors 1, 3, …, 13)
    assert keys == {f"image_proj.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")} | {
        f"ip_adapter.{i}.to_{kv}_ip.weight" for i in range(1, 14, 2) for kv in "kv"}


@pytest.fixture(scope="module")
def sd_ip():
    """tiny-sd with the IP-Adapter, and what it made of a prompt before the adapter."""
    pipes = _load("embedded:tiny-sd")
    plain = _run(pipes, "t2i", ["a red shoe"], [1])
    return pipes, load_ip_adapter(pipes, "embedded:tiny-ip-adapter"), plain


def test_ip_adapter_loads_into_all_three_pipelines(sd_ip):
    from transformers import CLIPVisionModelWithProjection

    pipes, info, _ = sd_ip
    assert (info.weight_name, info.image_encoder) == ("ip-adapter_tiny-sd.safetensors", "image_encoder")
    assert isinstance(pipes.t2i.image_encoder, CLIPVisionModelWithProjection)
    for pipe in (pipes.img2img, pipes.inpaint):
        assert pipe.image_encoder is pipes.t2i.image_encoder and pipe.unet is pipes.t2i.unet
        assert pipe.feature_extractor is pipes.t2i.feature_extractor


@pytest.mark.parametrize("mode", MODES)
def test_style_image_steers_every_mode(sd_ip, mode):
    pipes = sd_ip[0]
    first = _run(pipes, mode, ["a red shoe"], [1], ip_adapter_image=PRODUCT)
    assert np.array_equal(first, _run(pipes, mode, ["a red shoe"], [1], ip_adapter_image=PRODUCT))
    assert _differ(first, _run(pipes, mode, ["a red shoe"], [1], ip_adapter_image=OTHER_STYLE))


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_style_embedded_once_equals_the_image(sd_ip, guidance):
    pipes = sd_ip[0]
    embeds = embed_style_image(pipes.t2i, PRODUCT, "sd")
    assert tuple(embeds.shape) == (2, 1, 32)
    kw = dict(guidance_scale=guidance)
    by_image = _run(pipes, "img2img", ["a red shoe"], [1], ip_adapter_image=PRODUCT, **kw)
    by_embeds = _run(pipes, "img2img", ["a red shoe"], [1], **style_embeds(pipes.t2i, embeds, guidance, "sd"), **kw)
    assert np.abs(by_image - by_embeds).max() <= 1e-6


def test_batch_sharing_a_style_image_matches_single(sd_ip):
    pipes = sd_ip[0]
    embeds = style_embeds(pipes.t2i, embed_style_image(pipes.t2i, PRODUCT, "sd"), KW["guidance_scale"], "sd")
    pair = _run(pipes, "t2i", ["a red shoe", "a blue bag"], [1, 2], **embeds)
    for k, (prompt, seed) in enumerate([("a red shoe", 1), ("a blue bag", 2)]):
        alone = _run(pipes, "t2i", [prompt], [seed], **embeds)
        assert np.abs(pair[k] - alone[0]).max() <= 2 / 255


def test_per_sample_style_embeds_mix_batch_mates(sd_ip):
    """Why candidates are grouped by style image: diffusers 0.42 tiles the embeds it is given
    over the batch, so one row per prompt does not fail, but every prompt then attends to all
    the rows: each candidate gets its batch mates' style images too."""
    pipes = sd_ip[0]
    (neg_a, pos_a), (neg_b, pos_b) = (embed_style_image(pipes.t2i, im, "sd") for im in (PRODUCT, OTHER_STYLE))
    per_sample = torch.stack([neg_a, neg_b, pos_a, pos_b])  # (4, 1, D): rows of a and b
    pair = _run(pipes, "t2i", ["a red shoe", "a blue bag"], [1, 2], ip_adapter_image_embeds=[per_sample])
    own = _run(pipes, "t2i", ["a red shoe"], [1], ip_adapter_image=PRODUCT)
    both = torch.stack([torch.cat([neg_a, neg_b]), torch.cat([pos_a, pos_b])])[:, None]  # a and b at once
    with_both = _run(pipes, "t2i", ["a red shoe"], [1], ip_adapter_image_embeds=[both[:, 0]])
    assert _differ(pair[0], own[0])
    assert np.abs(pair[0] - with_both[0]).max() <= 2 / 255


def test_ip_adapter_scale_is_honoured(sd_ip):
    """Scale 0 skips the adapter: a candidate without a style image gets the model's own pixels."""
    pipes, _, plain = sd_ip
    try:
        pipes.t2i.set_ip_adapter_scale(0.0)
        off = _run(pipes, "t2i", ["a red shoe"], [1], ip_adapter_image=OTHER_STYLE)
        pipes.t2i.set_ip_adapter_scale(0.5)
        half = _run(pipes, "t2i", ["a red shoe"], [1], ip_adapter_image=OTHER_STYLE)
    finally:
        pipes.t2i.set_ip_adapter_scale(1.0)
    full = _run(pipes, "t2i", ["a red shoe"], [1], ip_adapter_image=OTHER_STYLE)
    assert np.array_equal(off, plain)
    assert _differ(half, plain) and _differ(half, full)


@pytest.fixture(scope="module")
def sd_cn():
    """tiny-sd and its ControlNet pipelines."""
    pipes = _load("embedded:tiny-sd")
    return pipes, load_controlnet(pipes, "embedded:tiny-controlnet")


def test_controlnet_pipelines_share_the_model(sd_cn):
    base, cn = sd_cn
    assert [type(p).__name__ for p in (cn.t2i, cn.img2img, cn.inpaint)] == [
        "StableDiffusionControlNetPipeline", "StableDiffusionControlNetImg2ImgPipeline",
        "StableDiffusionControlNetInpaintPipeline"]
    for pipe in (cn.t2i, cn.img2img, cn.inpaint):
        assert pipe.unet is base.t2i.unet and pipe.vae is base.t2i.vae and pipe.controlnet is cn.t2i.controlnet
    assert cn.t2i.controlnet.config.cross_attention_dim == 32 and cn.model_id == base.model_id


@pytest.mark.parametrize("mode", MODES)
def test_structure_image_steers_every_mode(sd_cn, mode):
    cn = sd_cn[1]
    box = _run(cn, mode, ["a red shoe"], [1], structure=_structure("box"))
    assert np.array_equal(box, _run(cn, mode, ["a red shoe"], [1], structure=_structure("box")))
    assert _differ(box, _run(cn, mode, ["a red shoe"], [1], structure=_structure("disc")))


def test_structure_batch_matches_single(sd_cn):
    cn = sd_cn[1]
    shapes = [_structure("box"), _structure("disc")]
    pair = _run(cn, "t2i", ["a red shoe", "a blue bag"], [1, 2], structure=shapes)
    alone = _run(cn, "t2i", ["a blue bag"], [2], structure=shapes[1])
    assert np.abs(pair[1] - alone[0]).max() <= 2 / 255


def test_controlnet_conditioning_scale_is_honoured(sd_cn):
    base, cn = sd_cn
    plain = _run(base, "t2i", ["a red shoe"], [1])
    scaled = {s: _run(cn, "t2i", ["a red shoe"], [1], structure=_structure("box"),
                      controlnet_conditioning_scale=s) for s in (0.0, 0.5, 1.0)}
    assert np.array_equal(scaled[0.0], plain)
    assert _differ(scaled[0.5], plain) and _differ(scaled[0.5], scaled[1.0])


def test_adapter_specs_that_do_not_fit_fail_clearly(sd_cn, tmp_path):
    base = sd_cn[0]
    ip, cn = embedded.ensure("tiny-ip-adapter"), embedded.ensure("tiny-controlnet")
    with pytest.raises(ModelLoadError, match=r"7 attentions taking an image, to_k_ip \(32, 32\)"):
        load_ip_adapter(base, "embedded:tiny-ip-adapter", weight_name="ip-adapter_tiny-sdxl.safetensors")
    shutil.copytree(ip, tmp_path / "two")
    shutil.copy(ip / "ip-adapter_tiny-sd.safetensors", tmp_path / "two" / "ip-adapter_copy.safetensors")
    (tmp_path / "two" / "junk.safetensors").write_bytes(b"not a safetensors file")  # skipped
    with pytest.raises(ModelLoadError, match="several IP-Adapter weight files fit"):
        load_ip_adapter(base, str(tmp_path / "two"))
    with pytest.raises(ModelLoadError, match="no IP-Adapter weights nope.safetensors"):
        load_ip_adapter(base, "embedded:tiny-ip-adapter", weight_name="nope.safetensors")
    with pytest.raises(ModelLoadError, match="no-such-folder"):
        load_ip_adapter(base, str(tmp_path / "no-such-folder"))
    with pytest.raises(ModelLoadError, match="another base model"):
        load_controlnet(base, str(cn / "tiny-sdxl"))
    with pytest.raises(ModelLoadError, match="one ControlNet for this model, found none"):
        load_controlnet(base, str(tmp_path))
    with pytest.raises(ModelLoadError, match="nothing is downloaded"):
        load_controlnet(base, "no-such-org/no-such-controlnet")
    assert base.t2i.unet.encoder_hid_proj is None  # nothing was loaded on the way


def test_hub_id_in_the_local_cache_loads(sd_cn, tmp_path, monkeypatch):
    """A hub id is looked up in the local Hugging Face cache (here a fake one), never fetched."""
    from huggingface_hub import constants

    repo = tmp_path / "models--acme--tiny-controlnet"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    shutil.copytree(embedded.ensure("tiny-controlnet"), repo / "snapshots" / ("0" * 40))
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    cn = load_controlnet(sd_cn[0], "acme/tiny-controlnet")
    assert cn.t2i.controlnet.config.cross_attention_dim == 32


def test_sdxl_takes_both_adapters():
    """tiny-sdxl gets its own IP-Adapter weights and ControlNet from the same folders, and the
    ControlNet pipelines, derived after the IP-Adapter, take a style and a structure image."""
    xl = _load("embedded:tiny-sdxl")
    info = load_ip_adapter(xl, "embedded:tiny-ip-adapter")
    cn = load_controlnet(xl, "embedded:tiny-controlnet")
    assert info.weight_name == "ip-adapter_tiny-sdxl.safetensors"
    assert [type(p).__name__ for p in (cn.t2i, cn.img2img, cn.inpaint)] == [
        "StableDiffusionXLControlNetPipeline", "StableDiffusionXLControlNetImg2ImgPipeline",
        "StableDiffusionXLControlNetInpaintPipeline"]
    assert cn.inpaint.image_encoder is xl.t2i.image_encoder

    def run(mode, style, shape):
        return _run(cn, mode, ["a red shoe"], [1], ip_adapter_image=style, structure=_structure(shape))

    first = run("t2i", PRODUCT, "box")
    assert np.array_equal(first, run("t2i", PRODUCT, "box"))
    assert _differ(first, run("t2i", OTHER_STYLE, "box")) and _differ(first, run("t2i", PRODUCT, "disc"))
    for mode in ("img2img", "inpaint"):  # both take both images, and either one steers
        first = run(mode, PRODUCT, "box")
        assert _differ(first, run(mode, OTHER_STYLE, "box")) and _differ(first, run(mode, PRODUCT, "disc"))
