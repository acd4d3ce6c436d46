"""The embedded adapters: `tiny-ip-adapter` (IP-Adapters in h94/IP-Adapter's, XLabs' FLUX and
InstantX's SD3.5 layouts) and `tiny-controlnet` (ControlNets made from each base's denoiser, as
ControlNet training starts). They serve every embedded base: an adapter is tied to its base's
attention widths, so each folder holds one adapter per base, and `ip_adapter.py` and `controlnet.py` pick the one
that fits the loaded pipeline. Untrained, but the real classes, keys and file layout (see
embedded.py).

IP-Adapter folder: `image_encoder/` (CLIP vision, read by the UNet and FLUX adapters) and one
weight file per base at the root; `sd3/` holds the SD3.5 adapter beside its own SigLIP
`image_encoder/` (InstantX pairs its adapter with SigLIP). ControlNet folder: one subfolder per
base (tiny-flux-schnell shares tiny-flux's: the same transformer widths).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.tiny_unet import SEED, sd_unet, sdxl_unet

IMAGE_ENCODER = "image_encoder"  # the subfolder load_ip_adapter reads by default
IMAGE_SIZE = 64  # the tiny image encoder's input side (real CLIP-H: 224)
# base → the IP-Adapter weight file for it (h94 names them ip-adapter_sd15, ip-adapter_sdxl, …)
IP_ADAPTER_WEIGHTS = {"tiny-sd": "ip-adapter_tiny-sd.safetensors",
                      "tiny-sdxl": "ip-adapter_tiny-sdxl.safetensors"}
FLUX_IP_ADAPTER = "ip-adapter_tiny-flux.safetensors"  # XLabs names theirs ip_adapter.safetensors
SD3_IP_ADAPTER = "sd3/ip-adapter_tiny-sd3.safetensors"  # beside sd3/image_encoder (SigLIP)
UNETS = {"tiny-sd": sd_unet, "tiny-sdxl": sdxl_unet}  # base → its UNet, drawn under SEED
TRANSFORMERS = ("tiny-flux", "tiny-sd3")  # bases whose ControlNet / IP-Adapter read their transformer


def _base_unet(base: str):
    """Exactly the base's UNet weights: its build draws the UNet first after seeding."""
    import torch

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        return UNETS[base]()


def _cross_attentions(unet) -> list[tuple[int, object]]:
    """(index among all attention processors, Attention module) of each cross-attention, in
    `attn_processors` order: the index is the `ip_adapter.<i>` key (h94 numbers every processor,
    self- and cross-attention alike, so the cross-attentions are 1, 3, 5, …)."""
    return [(i, unet.get_submodule(name.removesuffix(".processor")))
            for i, name in enumerate(unet.attn_processors) if name.endswith("attn2.processor")]


def _ip_adapter_state(unet, image_embed_dim: int, seed: int) -> dict:
    """An IP-Adapter's state dict in h94's keys: `image_proj.proj` (CLIP image embedding → four
    tokens of the cross-attention width) with its LayerNorm, and per cross-attention `to_k_ip` /
    `to_v_ip`, initialised from that attention's `to_k` / `to_v` as IP-Adapter's training does."""
    import torch
    from diffusers.models.embeddings import ImageProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = ImageProjection(image_embed_dim=image_embed_dim,
                               cross_attention_dim=unet.config.cross_attention_dim,
                               num_image_text_embeds=4)
    state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v
             for k, v in proj.state_dict().items()}
    for i, attn in _cross_attentions(unet):
        state[f"ip_adapter.{i}.to_k_ip.weight"] = attn.to_k.weight
        state[f"ip_adapter.{i}.to_v_ip.weight"] = attn.to_v.weight
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def build_tiny_ip_adapter(folder: Path) -> None:
    """`image_encoder/` (a CLIPVisionModelWithProjection with its image processor config) and
    one weight file per base, all reading the same image embedding."""
    import torch
    from safetensors.torch import save_file
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModelWithProjection

    config = CLIPVisionConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32,
                              intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                              projection_dim=32)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED)
        encoder = CLIPVisionModelWithProjection(config)
    encoder.save_pretrained(folder / IMAGE_ENCODER)
    CLIPImageProcessor(size={"shortest_edge": IMAGE_SIZE},
                       crop_size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}
                       ).save_pretrained(folder / IMAGE_ENCODER)
    for n, (base, weight_name) in enumerate(IP_ADAPTER_WEIGHTS.items()):
        state = _ip_adapter_state(_base_unet(base), config.projection_dim, SEED + 1 + n)
        save_file(state, str(folder / weight_name), metadata={"format": "pt"})
    save_file(_flux_ip_adapter_state(_base_transformer("tiny-flux"), config.projection_dim, SEED + 3),
              str(folder / FLUX_IP_ADAPTER), metadata={"format": "pt"})
    _build_sd3_ip_adapter(folder / SD3_IP_ADAPTER)


def _base_transformer(base: str):
    """The embedded base's transformer, read back from its built folder."""
    import diffusers

    from pipeline.models.embedded import ensure

    folder = ensure(base) / "transformer"
    cls = {"tiny-flux": diffusers.FluxTransformer2DModel, "tiny-sd3": diffusers.SD3Transformer2DModel}[base]
    return cls.from_pretrained(folder, use_safetensors=True, local_files_only=True)


def _flux_ip_adapter_state(transformer, image_embed_dim: int, seed: int) -> dict:
    """XLabs' FLUX IP-Adapter in diffusers' keys: `image_proj` (CLIP image embedding → four
    tokens of T5's width) and, per double-stream block, `to_k_ip` / `to_v_ip` (T5 width → the
    transformer's), with biases."""
    import torch
    from diffusers.models.embeddings import ImageProjection

    width, inner = transformer.config.joint_attention_dim, transformer.inner_dim
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        proj = ImageProjection(image_embed_dim=image_embed_dim, cross_attention_dim=width, num_image_text_embeds=4)
        state = {f"image_proj.{k.replace('image_embeds', 'proj')}": v for k, v in proj.state_dict().items()}
        for i in range(len(transformer.transformer_blocks)):
            for name in ("to_k_ip", "to_v_ip"):
                layer = torch.nn.Linear(width, inner)
                state[f"ip_adapter.{i}.{name}.weight"], state[f"ip_adapter.{i}.{name}.bias"] = layer.weight, layer.bias
    return {k: v.detach().clone().contiguous() for k, v in state.items()}


def _build_sd3_ip_adapter(file: Path) -> None:
    """InstantX's SD3.5 IP-Adapter: a SigLIP vision encoder's penultimate states, resampled with
    the timestep (IPAdapterTimeImageProjection: four blocks, 64-wide heads) into tokens that
    each joint attention reads through its own AdaLayerNorm, `to_k_ip` and `to_v_ip`."""
    import torch
    from diffusers.models.attention_processor import SD3IPAdapterJointAttnProcessor2_0
    from diffusers.models.embeddings import IPAdapterTimeImageProjection
    from safetensors.torch import save_file
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    transformer = _base_transformer("tiny-sd3")
    head, heads = transformer.config.attention_head_dim, transformer.config.num_attention_heads
    hidden, resampler = head * heads, 64  # the converter reads the resampler's heads as width // 64
    config = SiglipVisionConfig(image_size=IMAGE_SIZE, patch_size=8, hidden_size=32, intermediate_size=64,
                                num_hidden_layers=2, num_attention_heads=2)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(SEED + 4)
        encoder = SiglipVisionModel(config)
        proj = IPAdapterTimeImageProjection(embed_dim=config.hidden_size, output_dim=hidden, hidden_dim=resampler,
                                            heads=1, num_queries=4, timestep_in_dim=32)
        state = {f"image_proj.{k}": v for k, v in proj.state_dict().items()}
        for i, _ in enumerate(transformer.attn_processors):
            processor = SD3IPAdapterJointAttnProcessor2_0(hidden_size=hidden, ip_hidden_states_dim=hidden,
                                                          head_dim=head, timesteps_emb_dim=resampler)
            state.update({f"ip_adapter.{i}.{k}": v for k, v in processor.state_dict().items()})
    encoder.save_pretrained(file.parent / IMAGE_ENCODER)
    SiglipImageProcessor(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE}).save_pretrained(file.parent / IMAGE_ENCODER)
    save_file({k: v.detach().clone().contiguous() for k, v in state.items()}, str(file), metadata={"format": "pt"})


def build_tiny_controlnet(folder: Path) -> None:
    """One ControlNet per base in a subfolder named after it: `ControlNetModel.from_unet` of a
    UNet base (see `_steerable`), `FluxControlNetModel` / `SD3ControlNetModel.from_transformer`
    of a transformer base, one block deep (see `_steerable_transformer`)."""
    import torch
    from diffusers import ControlNetModel, FluxControlNetModel, SD3ControlNetModel

    for base in UNETS:
        unet = _base_unet(base)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
            _steerable(net)
        net.save_pretrained(folder / base, safe_serialization=True)
    for base in TRANSFORMERS:
        transformer = _base_transformer(base)
        c = transformer.config
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            if base == "tiny-flux":
                net = FluxControlNetModel.from_transformer(
                    transformer, num_layers=1, num_single_layers=1, attention_head_dim=c.attention_head_dim,
                    num_attention_heads=c.num_attention_heads)
            else:
                net = SD3ControlNetModel.from_transformer(transformer, num_layers=1, num_extra_conditioning_channels=0)
            _steerable_transformer(net)
        net.save_pretrained(folder / base, safe_serialization=True)


def _steerable_transformer(net) -> None:
    """A transformer ControlNet starts from zero layers too (its control-image embedder and
    per-block outputs): ordinary random ones instead, so the structure image steers."""
    import torch

    with torch.no_grad():
        embedder = getattr(net, "controlnet_x_embedder", None) or net.pos_embed_input
        layers = [m for m in (*embedder.modules(), *net.controlnet_blocks.modules())
                  if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
        for layer in layers:
            layer.reset_parameters()


def _steerable(net) -> None:
    """Training starts from zero output convolutions, so an untrained ControlNet is a no-op;
    and PyTorch's default init shrinks the signal at every layer, so the edge map would reach
    the UNet a thousandth as large as the latent. Instead: ordinary random output convolutions,
    and a conditioning embedding with He-initialised convolutions and no biases (a black image
    embeds to zero), its last one ×10 so that an edge map's embedding is of the order of the
    latent's. The structure image then visibly steers the tiny models."""
    import torch

    with torch.no_grad():
        for conv in (*net.controlnet_down_blocks, net.controlnet_mid_block):
            conv.reset_parameters()
        embedding = net.controlnet_cond_embedding
        convs = [m for m in embedding.modules() if isinstance(m, torch.nn.Conv2d)]
        for conv in convs:
            torch.nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            torch.nn.init.zeros_(conv.bias)
        embedding.conv_out.weight.mul_(10.0)
