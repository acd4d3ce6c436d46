"""The generation stage on the tiny model: shapes, batching by settings, product inputs."""

import numpy as np
import pytest
from PIL import Image

from pipeline.models.diffusion import load_diffusion, optimize
from pipeline.models.loading import resolve_dtype
from pipeline.spec.schema import PLAN_FIELDS
from pipeline.stages.generate import Generator
from pipeline.stages.product import prepare_inputs


@pytest.fixture(scope="module")
def generator():
    pipes = load_diffusion("embedded:tiny-sd", revision=None, scheduler=None, device="cpu",
                           dtype=resolve_dtype("float32", "cpu"))
    return Generator(pipes, batch_size=2)


def cand(seed, width=64, height=64, prompt="a red mug", **kw):
    return {f.name: None for f in PLAN_FIELDS} | {
        "prompt": prompt, "negative_prompt": "", "seed": seed, "mode": "t2i", "width": width, "height": height,
        "steps": 2, "guidance_scale": 3.0, **kw}


def test_mixed_shapes_are_batched_apart_and_keep_their_order(generator):
    cands = [cand(1), cand(2, width=128), cand(3), cand(4, height=128), cand(5)]
    out = generator(cands)
    assert [o.image.shape for o in out] == [(64, 64, 3), (64, 128, 3), (64, 64, 3), (128, 64, 3), (64, 64, 3)]
    assert all(o.error is None and o.image.dtype == np.uint8 for o in out)
    # batch_size 2: the three 64x64 candidates run as a batch of 2 and a batch of 1
    assert [(o.batch_size, o.batch_position) for o in out] == [(2, 0), (1, 0), (2, 1), (1, 0), (1, 0)]


def test_a_candidate_alone_matches_itself_in_a_batch(generator):
    alone = generator([cand(42)])[0].image.astype(int)
    batched = generator([cand(7), cand(42)])[1].image.astype(int)
    assert np.abs(alone - batched).max() <= 2
    assert not np.array_equal(generator([cand(43)])[0].image, alone)  # the seed matters


def test_one_bad_candidate_does_not_sink_its_batch(generator, tmp_path):
    broken = tmp_path / "gone.png"
    out = generator([cand(1), cand(2, mode="img2img", init_image=str(broken), strength=0.5)])
    assert out[0].error is None and out[0].image is not None
    assert out[1].image is None and out[1].error.startswith("generate: FileNotFoundError")


def test_mask_drawn_at_another_size_is_aligned_with_the_product(tmp_path):
    Image.new("RGB", (200, 100), (10, 20, 30)).save(tmp_path / "p.png")
    mask = Image.new("L", (50, 25), 255)  # a quarter-size mask: keep the left half
    mask.paste(0, (0, 0, 25, 25))
    mask.save(tmp_path / "m.png")
    init, keep = prepare_inputs(str(tmp_path / "p.png"), str(tmp_path / "m.png"), 64, 64)
    k = np.asarray(keep)
    assert init.size == (64, 64) and k.shape == (64, 64)
    assert k[32, 10] == 255 and k[32, 50] == 0  # left half kept, right half repainted
    assert k[5, 32] == 0  # letterbox padding is repainted


def test_exif_rotated_product_is_used_upright(tmp_path):
    im = Image.new("RGB", (80, 40), (255, 0, 0))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "phone.jpg", exif=exif)
    init, keep = prepare_inputs(str(tmp_path / "phone.jpg"), "alpha", 64, 64)
    k = np.asarray(keep)
    # upright the photo is 40 wide × 80 high: kept band is vertical, padding left and right
    assert k[32, 32] == 255 and k[32, 2] == 0 and k[2, 32] == 255


@pytest.mark.parametrize("options", [{"channels_last": True}, {"vae_slicing": True}])
def test_throughput_options_keep_the_pixels(options):
    """The options change memory layout and decoding, not the image (within 2/255)."""
    def make(**kw):
        pipes = load_diffusion("embedded:tiny-sd", revision=None, scheduler=None, device="cpu",
                               dtype=resolve_dtype("float32", "cpu"))
        optimize(pipes, **kw)
        return Generator(pipes, batch_size=2)([cand(3), cand(4)])

    plain, tuned = make(), make(**options)
    for a, b in zip(plain, tuned, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2


def test_vae_tiling_decodes_in_tiles_and_stays_reproducible():
    """At 128 px the tiny VAE's latent (16) is past its tile size (8): the tiled path runs."""
    pipes = load_diffusion("embedded:tiny-sd", revision=None, scheduler=None, device="cpu",
                           dtype=resolve_dtype("float32", "cpu"))
    optimize(pipes, vae_tiling=True)
    vae, calls = pipes.t2i.vae, []
    tiled = vae.tiled_decode
    vae.tiled_decode = lambda *a, **kw: calls.append(1) or tiled(*a, **kw)
    gen = Generator(pipes, batch_size=2)
    alone = gen([cand(3, width=128, height=128)])[0].image
    batched = gen([cand(4, width=128, height=128), cand(3, width=128, height=128)])[1].image
    assert calls and alone.shape == (128, 128, 3)
    assert np.abs(alone.astype(int) - batched.astype(int)).max() <= 2


@pytest.mark.slow
def test_compiled_unet_gives_the_same_images():
    pipes = load_diffusion("embedded:tiny-sd", revision=None, scheduler=None, device="cpu",
                           dtype=resolve_dtype("float32", "cpu"))
    eager = Generator(pipes, batch_size=1)([cand(9)])[0].image.astype(int)
    optimize(pipes, compile=True)
    assert pipes.img2img.unet is pipes.t2i.unet  # one compiled module serves every mode
    compiled = Generator(pipes, batch_size=1)([cand(9)])[0].image.astype(int)
    assert np.abs(eager - compiled).max() <= 2


def test_style_lora_changes_only_its_candidates_and_switches_back(generator, tmp_path):
    from tests.helpers import make_lora

    lora = str(make_lora(tmp_path / "brand"))
    base = generator([cand(5)])[0].image.astype(int)
    mixed = generator([cand(5), cand(5, lora=lora, lora_scale=1.0), cand(5, lora=lora, lora_scale=0.5)])
    plain, full, half = (o.image.astype(int) for o in mixed)
    assert np.abs(plain - base).max() <= 2  # the LoRA of another group did not leak
    assert np.abs(full - base).max() > 10 and np.abs(half - base).max() > 2
    assert np.abs(full - half).max() > 2
    again = generator([cand(5, lora=lora, lora_scale=1.0)])[0].image.astype(int)
    assert np.abs(again - full).max() <= 2  # reproducible
    assert np.abs(generator([cand(5)])[0].image.astype(int) - base).max() <= 2  # off again


def test_loras_loaded_at_start_give_the_pixels_of_loras_loaded_on_first_use(tmp_path):
    """An actor loads its styles' LoRAs when it starts: switching style then only switches
    adapters. A candidate's pixels must not depend on which other LoRAs are loaded beside its own."""
    from tests.helpers import make_lora

    brand, other = str(make_lora(tmp_path / "brand", seed=1)), str(make_lora(tmp_path / "other", seed=2))

    def fresh(**kw):
        pipes = load_diffusion("embedded:tiny-sd", revision=None, scheduler=None, device="cpu",
                               dtype=resolve_dtype("float32", "cpu"))
        return Generator(pipes, batch_size=2, **kw)

    lazy = fresh()([cand(5), cand(5, lora=brand, lora_scale=1.0)])
    preloaded = fresh(loras=(other, brand))
    assert list(preloaded._adapters) == [other, brand]
    early = preloaded([cand(5), cand(5, lora=brand, lora_scale=1.0)])
    for a, b in zip(lazy, early, strict=True):
        assert np.abs(a.image.astype(int) - b.image.astype(int)).max() <= 2


class Spy:
    """A pipeline stand-in that calls the real one and keeps its raw output (0..1 floats)."""

    def __init__(self, pipe):
        self.pipe, self.raw, self.calls = pipe, [], []

    def __call__(self, **kwargs):
        self.calls.append(kwargs)
        result = self.pipe(**kwargs)
        self.raw.extend(np.clip(np.rint(np.asarray(img) * 255), 0, 255) for img in result.images)
        return result


def soft_cutout(path, size=64):
    """A product cut-out with anti-aliased edges: opaque disc, alpha ramping 255 → 0 around it."""
    yy, xx = np.mgrid[:size, :size]
    d = np.hypot(yy - size / 2 + 0.5, xx - size / 2 + 0.5)
    alpha = np.rint(np.clip((size * 0.45 - d) / (size * 0.2), 0, 1) * 255).astype(np.uint8)
    rgb = np.stack([200 + yy % 40, 30 + xx % 50, np.full_like(xx, 40)], axis=-1).astype(np.uint8)
    Image.fromarray(np.dstack([rgb, alpha]), "RGBA").save(path)
    return rgb.astype(float), alpha.astype(float)[..., None] / 255


def test_soft_cutout_is_composited_once(tmp_path):
    """Staging layers the product over the generated image once: p·a + g·(1−a), fringe included."""
    from pipeline.stages.product import composite

    rgb, a = soft_cutout(tmp_path / "cut.png")
    assert a.min() == 0 and a.max() == 1 and len(np.unique(a)) > 20  # transparent, opaque, a real ramp
    generated = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
    product, keep = prepare_inputs(str(tmp_path / "cut.png"), "alpha", 64, 64)
    out = composite(generated, product, keep).astype(float)
    expected = rgb * a + generated * (1 - a)
    assert np.abs(out - expected).max() <= 1


def test_user_mask_keeps_the_inverted_mask(tmp_path):
    """A drawn mask (white = repaint, soft edge) composites like an alpha of 255 − mask."""
    from pipeline.stages.product import composite

    photo = np.random.default_rng(1).integers(0, 256, (64, 64, 3), np.uint8)
    Image.fromarray(photo).save(tmp_path / "p.png")
    ramp = np.tile(np.linspace(0, 255, 64).round().astype(np.uint8), (64, 1))
    Image.fromarray(ramp).save(tmp_path / "m.png")
    generated = np.random.default_rng(2).integers(0, 256, (64, 64, 3), np.uint8)
    product, keep = prepare_inputs(str(tmp_path / "p.png"), str(tmp_path / "m.png"), 64, 64)
    a = (255 - ramp.astype(float))[..., None] / 255
    expected = photo * a + generated * (1 - a)
    assert np.abs(composite(generated, product, keep).astype(float) - expected).max() <= 1


def test_staged_cutout_is_product_over_the_raw_generated_image(generator, tmp_path):
    """End to end: interior product pixels exact, fringe pixels p·a + g·(1−a) within 1/255."""
    import dataclasses

    rgb, a = soft_cutout(tmp_path / "cut.png")
    spy = Spy(generator.pipes.inpaint)
    staged = Generator(dataclasses.replace(generator.pipes, inpaint=spy), batch_size=2)
    out = staged([cand(3, mode="inpaint", init_image=str(tmp_path / "cut.png"), mask="alpha", strength=1.0)])
    image, raw = out[0].image.astype(float), spy.raw[0]
    interior, fringe = a[..., 0] == 1, (a[..., 0] > 0) & (a[..., 0] < 1)
    assert (image[interior] == rgb[interior]).all()
    assert np.abs(image - (rgb * a + raw * (1 - a)))[fringe].max() <= 1


class FillBackground:
    """The inpaint pipeline, with the init image's repaint region painted one colour first."""

    def __init__(self, pipe, colour):
        self.pipe, self.colour = pipe, colour

    def __call__(self, *, image, mask_image, **kwargs):
        filled = [Image.composite(Image.new("RGB", im.size, self.colour), im.convert("RGB"), m)
                  for im, m in zip(image, mask_image, strict=True)]
        return self.pipe(image=filled, mask_image=mask_image, **kwargs)


def test_staged_background_is_generated_not_the_placeholder(generator, tmp_path):
    """At default settings staging generates the background from noise: what the init image
    holds behind the product (the placeholder) does not show through."""
    import dataclasses

    from pipeline.plan.build import build_plan
    from pipeline.spec.manifest import load_inputs
    from tests.helpers import job

    _, a = soft_cutout(tmp_path / "cut.png")
    cfg = job(tmp_path, {"id": ["staged"], "prompt": ["a red mug"], "product_image": ["cut.png"]}, styles=None)
    [record] = build_plan(load_inputs(cfg), cfg).to_pylist()
    assert record["mode"] == "inpaint"
    backgrounds = []
    for colour in ((0, 0, 0), (255, 255, 255)):
        pipes = dataclasses.replace(generator.pipes, inpaint=FillBackground(generator.pipes.inpaint, colour))
        backgrounds.append(Generator(pipes, batch_size=1)([record])[0].image[a[..., 0] == 0].astype(int))
    assert np.abs(backgrounds[0] - backgrounds[1]).max() <= 2


def test_inpaint_keeps_the_product_pixels_and_repaints_everything_else(generator, tmp_path):
    """What the pipeline is asked to keep is the product's own pixels, not product blended with
    the placeholder; every pixel the product does not cover fully, soft edges included, is repainted."""
    import dataclasses

    rgb, a = soft_cutout(tmp_path / "cut.png")
    spy = Spy(generator.pipes.inpaint)
    staged = Generator(dataclasses.replace(generator.pipes, inpaint=spy), batch_size=1)
    staged([cand(3, mode="inpaint", init_image=str(tmp_path / "cut.png"), mask="alpha", strength=1.0)])
    image = np.asarray(spy.calls[0]["image"][0].convert("RGB")).astype(float)
    repaint = np.asarray(spy.calls[0]["mask_image"][0].convert("L"))
    assert set(np.unique(repaint)) == {0, 255}  # no soft mask for the pipeline to binarise at 0.5
    assert ((repaint == 0) == (a[..., 0] == 1)).all()
    assert (image[repaint == 0] == rgb[repaint == 0]).all()


@pytest.fixture(scope="module")
def sdxl():
    pipes = load_diffusion("embedded:tiny-sdxl", revision=None, scheduler=None, device="cpu",
                           dtype=resolve_dtype("float32", "cpu"))
    return Generator(pipes, batch_size=4)


def test_sdxl_candidate_is_independent_of_its_batch_mates_negative_prompts(sdxl):
    """SDXL zeroes the negative embedding only when no negative prompt is passed: a candidate
    without one must get the same conditioning alone as beside candidates that have one."""
    alone = sdxl([cand(5)])[0].image.astype(int)
    with_negative = sdxl([cand(6, negative_prompt="blurry")])[0].image.astype(int)
    mixed = sdxl([cand(6, negative_prompt="blurry"), cand(5), cand(7, negative_prompt="dark")])
    assert all(o.error is None for o in mixed)
    assert np.abs(mixed[1].image.astype(int) - alone).max() <= 2
    assert np.abs(mixed[0].image.astype(int) - with_negative).max() <= 2


def test_an_sdxl_style_lora_changes_its_candidates_and_switches_back(sdxl, tmp_path):
    from tests.helpers import make_lora

    lora = str(make_lora(tmp_path / "xl", model="embedded:tiny-sdxl"))
    base = sdxl([cand(5)])[0].image.astype(int)
    plain, styled = (o.image.astype(int) for o in sdxl([cand(5), cand(5, lora=lora, lora_scale=1.0)]))
    assert np.abs(plain - base).max() <= 2 and np.abs(styled - base).max() > 10
    again = sdxl([cand(5, lora=lora, lora_scale=1.0)])[0].image.astype(int)
    assert np.abs(again - styled).max() <= 2
    assert np.abs(sdxl([cand(5)])[0].image.astype(int) - base).max() <= 2  # off again


def test_sdxl_runs_every_mode_and_a_missing_mode_is_an_error_row(sdxl, tmp_path):
    """Image-to-image and staging run on SDXL's derived pipelines; a model without a mode's
    pipeline fails only the candidates of that mode, with a message, not the batch or the run."""
    import dataclasses

    soft_cutout(tmp_path / "cut.png")
    Image.new("RGB", (64, 64), (30, 90, 160)).save(tmp_path / "photo.png")
    cands = [cand(1), cand(2, mode="img2img", init_image=str(tmp_path / "photo.png"), strength=0.6),
             cand(3, mode="inpaint", init_image=str(tmp_path / "cut.png"), mask="alpha", strength=1.0)]
    out = sdxl(cands)
    assert all(o.error is None and o.image.shape == (64, 64, 3) for o in out)
    no_inpaint = Generator(dataclasses.replace(sdxl.pipes, inpaint=None), batch_size=4)(cands)
    assert [o.error is None for o in no_inpaint] == [True, True, False]
    assert "has no inpaint pipeline" in no_inpaint[2].error


def test_exif_rotated_style_reference_is_compared_upright(tmp_path):
    """A style's reference image goes through the one input loader, as product photos do: the
    similarity is taken with the image as it is shown, not as its pixels are stored."""
    import types

    import torch
    from PIL import ImageOps

    from pipeline.stages.candidate import CandidateStage

    im = Image.new("RGB", (80, 40), (255, 0, 0))
    im.paste((0, 0, 255), (0, 0, 20, 40))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90° on display
    im.save(tmp_path / "ref.jpg", exif=exif)
    seen = []

    def embed_images(images):
        seen.extend(images)
        return torch.ones(len(images), 4) / 2

    stage = types.SimpleNamespace(_references={}, scorer=types.SimpleNamespace(embed_images=embed_images))
    CandidateStage._reference_similarity(stage, str(tmp_path / "ref.jpg"), [0.5] * 4)
    with Image.open(tmp_path / "ref.jpg") as shown:
        upright = np.asarray(ImageOps.exif_transpose(shown).convert("RGB"))
    assert len(seen) == 1 and seen[0].shape == upright.shape == (80, 40, 3)
    assert np.array_equal(seen[0], upright)


@pytest.mark.slow
def test_a_compiled_model_swaps_style_loras_in_place_without_recompiling(tmp_path):
    """With [models].compile, a model's styles' LoRAs share one hot-swapped adapter slot: switching
    style replaces its weights (the compiled graph stays), no LoRA is the slot at scale 0, and the
    pixels are those of the LoRAs loaded the ordinary way."""
    from torch._dynamo.utils import counters

    from pipeline.models.lora import enable_lora_hotswap
    from tests.helpers import make_lora

    a, b = str(make_lora(tmp_path / "a", seed=1)), str(make_lora(tmp_path / "b", seed=2))
    order = [cand(5), cand(5, lora=a, lora_scale=1.0), cand(5, lora=b, lora_scale=1.0), cand(5),
             cand(5, lora=a, lora_scale=1.0)]

    def fresh():
        return load_diffusion("embedded:tiny-sd", revision=None, scheduler=None, device="cpu",
                              dtype=resolve_dtype("float32", "cpu"))

    plain = Generator(fresh(), batch_size=1)
    expected = [plain([c])[0].image.astype(int) for c in order]
    pipes = fresh()
    enable_lora_hotswap(pipes, (a, b))
    hot = Generator(pipes, batch_size=1, loras=(a, b), hotswap=True)  # the first LoRA in place, then compile
    optimize(pipes, compile=True)
    got = [hot([order[0]])[0].image.astype(int)]
    graphs = counters["stats"]["unique_graphs"]
    got += [hot([c])[0].image.astype(int) for c in order[1:]]
    assert counters["stats"]["unique_graphs"] - graphs <= 1  # at most the first change of scale
    for want, have in zip(expected, got, strict=True):
        assert np.abs(want - have).max() <= 2
    assert np.abs(got[1] - got[2]).max() > 10  # the swap did change the LoRA
