"""A style image (IP-Adapter) and a structure image (ControlNet) on the diffusion-transformer
families: the embedded adapters in the real layouts (XLabs' FLUX IP-Adapter, InstantX's SD3.5
IP-Adapter with SigLIP, FLUX / SD3 ControlNets from the transformer), loaded by the same calls,
steering exactly the modes `models.families.STEERING` says, and batch-invariant."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image
from safetensors import safe_open

from pipeline.errors import ModelLoadError
from pipeline.models import embedded
from pipeline.models.controlnet import load_controlnet
from pipeline.models.families import BOTH, STEERING, STRUCTURE_IMAGE, STYLE_IMAGE
from pipeline.models.ip_adapter import embed_style_image, load_ip_adapter, style_embeds
from tests.test_adapters import MASK, OTHER_STYLE, PRODUCT, SIZE, _differ, _gen, _load, _structure

MODES = ("t2i", "img2img", "inpaint")
KW = dict(num_inference_steps=2, guidance_scale=3.0, output_type="np")
BLACK = Image.new("RGB", (64, 64), 0)


def _run(pipes, mode, prompts, seeds, **kw):
    """One call of `mode`'s pipeline; a structure image is `structure=` (their `control_image`)."""
    if (structure := kw.pop("structure", None)) is not None:
        kw["control_image"] = structure
    inputs = {"t2i": SIZE, "img2img": dict(image=PRODUCT, strength=0.75, **SIZE),
              "inpaint": dict(image=PRODUCT, mask_image=MASK, strength=0.75, **SIZE)}[mode]
    return getattr(pipes, mode)(prompts, generator=_gen(*seeds), **{**KW, **inputs, **kw}).images


def _styled(pipes, family, image):
    """The call arguments of a style image, embedded once (as the actor does)."""
    blank = embed_style_image(pipes.t2i, BLACK, family)
    return style_embeds(pipes.t2i, embed_style_image(pipes.t2i, image, family), KW["guidance_scale"], family,
                        blank=blank)


@pytest.fixture(scope="module", params=[("embedded:tiny-flux", "flux"), ("embedded:tiny-sd3", "sd3")],
                ids=["flux", "sd3"])
def styled(request):
    """A transformer model with the IP-Adapter, and what it made of a prompt before the adapter."""
    model, family = request.param
    pipes = _load(model)
    plain = {mode: _run(pipes, mode, ["a red shoe"], [1]) for mode in MODES}
    return pipes, family, load_ip_adapter(pipes, "embedded:tiny-ip-adapter"), plain


def test_transformer_adapters_are_built_in_the_real_layouts():
    ip, cn = embedded.ensure("tiny-ip-adapter"), embedded.ensure("tiny-controlnet")
    with safe_open(str(ip / "ip-adapter_tiny-flux.safetensors"), "pt") as f:
        flux = set(f.keys())
    # one to_k_ip / to_v_ip (with biases) per double-stream block: tiny-flux has one
    assert flux == {f"image_proj.{m}.{p}" for m in ("proj", "norm") for p in ("weight", "bias")} | {
        f"ip_adapter.0.to_{kv}_ip.{p}" for kv in "kv" for p in ("weight", "bias")}
    with safe_open(str(ip / "sd3" / "ip-adapter_tiny-sd3.safetensors"), "pt") as f:
        sd3 = set(f.keys())
    assert {"image_proj.latents", "image_proj.proj_in.weight", "image_proj.time_embedding.linear_1.weight",
            "ip_adapter.0.norm_ip.linear.weight", "ip_adapter.1.to_k_ip.weight"} < sd3
    assert json.loads((ip / "sd3" / "image_encoder" / "config.json").read_text())["model_type"] == "siglip_vision_model"
    classes = {base: json.loads((cn / base / "config.json").read_text())["_class_name"]
               for base in ("tiny-flux", "tiny-sd3")}
    assert classes == {"tiny-flux": "FluxControlNetModel", "tiny-sd3": "SD3ControlNetModel"}


def test_the_ip_adapter_that_fits_loads_into_every_mode(styled):
    pipes, family, info, _ = styled
    assert (info.weight_name, info.image_encoder) == {
        "flux": ("ip-adapter_tiny-flux.safetensors", "image_encoder"),
        "sd3": ("sd3/ip-adapter_tiny-sd3.safetensors", "sd3/image_encoder")}[family]
    encoder = {"flux": "CLIPVisionModelWithProjection", "sd3": "SiglipVisionModel"}[family]
    assert type(pipes.t2i.image_encoder).__name__ == encoder
    for pipe in (pipes.img2img, pipes.inpaint):
        assert pipe.image_encoder is pipes.t2i.image_encoder and pipe.transformer is pipes.t2i.transformer


@pytest.mark.parametrize("mode", MODES)
def test_a_style_image_steers_every_mode_and_reproduces(styled, mode):
    pipes, family, _, _ = styled
    first = _run(pipes, mode, ["a red shoe"], [1], **_styled(pipes, family, PRODUCT))
    assert np.array_equal(first, _run(pipes, mode, ["a red shoe"], [1], **_styled(pipes, family, PRODUCT)))
    assert _differ(first, _run(pipes, mode, ["a red shoe"], [1], **_styled(pipes, family, OTHER_STYLE)))


@pytest.mark.parametrize("mode", MODES)
def test_scale_zero_gives_the_bare_models_pixels(styled, mode):
    """A candidate without a style image, on a model carrying the adapter: the model's own pixels."""
    pipes, family, _, plain = styled
    try:
        pipes.t2i.set_ip_adapter_scale(0.0)
        off = _run(pipes, mode, ["a red shoe"], [1], **_styled(pipes, family, OTHER_STYLE))
    finally:
        pipes.t2i.set_ip_adapter_scale(1.0)
    assert np.array_equal(off, plain[mode])


def test_a_batch_sharing_a_style_image_matches_each_alone(styled):
    pipes, family, _, _ = styled
    kw = _styled(pipes, family, PRODUCT)
    pair = _run(pipes, "t2i", ["a red shoe", "a blue bag"], [1, 2], **kw)
    for k, (prompt, seed) in enumerate([("a red shoe", 1), ("a blue bag", 2)]):
        assert np.abs(pair[k] - _run(pipes, "t2i", [prompt], [seed], **kw)[0]).max() <= 2 / 255


# ---- structure images ------------------------------------------------------------------------

CONTROLNET_PIPELINES = {
    "flux": ["FluxControlNetPipeline", "FluxControlNetImg2ImgPipeline", "FluxControlNetInpaintPipeline"],
    "sd3": ["StableDiffusion3ControlNetPipeline", None, None],
}


@pytest.fixture(scope="module", params=[("embedded:tiny-flux", "flux"), ("embedded:tiny-sd3", "sd3")],
                ids=["flux", "sd3"])
def controlled(request):
    model, family = request.param
    pipes = _load(model)
    return pipes, family, load_controlnet(pipes, "embedded:tiny-controlnet")


def test_controlnet_pipelines_are_derived_for_the_modes_the_family_steers(controlled):
    base, family, cn = controlled
    names = [type(p).__name__ if p is not None else None for p in (cn.t2i, cn.img2img, cn.inpaint)]
    assert names == CONTROLNET_PIPELINES[family]
    assert [m for m, p in zip(MODES, names, strict=True) if p] == list(STEERING[family][(STRUCTURE_IMAGE,)])
    for pipe in (p for p in (cn.t2i, cn.img2img, cn.inpaint) if p is not None):
        assert pipe.transformer is base.t2i.transformer and pipe.controlnet is cn.t2i.controlnet
        assert pipe.vae.decoder is base.t2i.vae.decoder and pipe.vae.encoder is base.t2i.vae.encoder


def test_a_structure_image_steers_and_reproduces_in_each_mode_it_is_taken(controlled):
    _, family, cn = controlled
    for mode in STEERING[family][(STRUCTURE_IMAGE,)]:
        box = _run(cn, mode, ["a red shoe"], [1], structure=_structure("box"))
        assert np.array_equal(box, _run(cn, mode, ["a red shoe"], [1], structure=_structure("box"))), mode
        assert _differ(box, _run(cn, mode, ["a red shoe"], [1], structure=_structure("disc"))), mode


def test_a_structure_batch_matches_each_alone(controlled):
    cn = controlled[2]
    shapes = [_structure("box"), _structure("disc")]
    pair = _run(cn, "t2i", ["a red shoe", "a blue bag"], [1, 2], structure=shapes)
    alone = _run(cn, "t2i", ["a blue bag"], [2], structure=shapes[1])
    assert np.abs(pair[1] - alone[0]).max() <= 2 / 255


def test_a_controlnet_for_another_base_is_refused(controlled):
    base, family, _ = controlled
    other = embedded.ensure("tiny-controlnet") / ("tiny-sd3" if family == "flux" else "tiny-flux")
    with pytest.raises(ModelLoadError, match="another base model"):
        load_controlnet(base, str(other))


@pytest.mark.parametrize("model, family", [("embedded:tiny-flux", "flux"), ("embedded:tiny-sd3", "sd3")])
def test_both_images_steer_text_to_image_together(model, family):
    """Where the family takes both in one call (text-to-image): each of them steers."""
    assert STEERING[family][BOTH] == ("t2i",) and STEERING[family][(STYLE_IMAGE,)] == MODES
    pipes = _load(model)
    load_ip_adapter(pipes, "embedded:tiny-ip-adapter")
    cn = load_controlnet(pipes, "embedded:tiny-controlnet")

    def run(style, shape):
        return _run(cn, "t2i", ["a red shoe"], [1], structure=_structure(shape), **_styled(cn, family, style))

    first = run(PRODUCT, "box")
    assert np.array_equal(first, run(PRODUCT, "box"))
    assert _differ(first, run(OTHER_STYLE, "box")) and _differ(first, run(PRODUCT, "disc"))
