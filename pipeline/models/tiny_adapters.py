"""The embedded adapters: `tiny-ip-adapter` (an IP-Adapter in h94/IP-Adapter's layout) and
`tiny-controlnet` (a ControlNet made from the base UNet, as ControlNet training starts). Both
serve tiny-sd and tiny-sdxl: an adapter is tied to its base's cross-attention, so each folder
holds one adapter per base, and `adapters.py` picks the one that fits the loaded pipeline.
Untrained, but the real classes, keys and file layout (see embedded.py).
"""

from __future__ import annotations

from pathlib import Path

from pipeline.models.tiny_unet import SEED, sd_unet, sdxl_unet

IMAGE_ENCODER = "image_encoder"  # the subfolder load_ip_adapter reads by default
IMAGE_SIZE = 64  # the tiny image encoder's input side (real CLIP-H: 224)
# base → the IP-Adapter weight file for it (h94 names them ip-adapter_sd15, ip-adapter_sdxl, …)
IP_ADAPTER_WEIGHTS = {"tiny-sd": "ip-adapter_tiny-sd.safetensors",
                      "tiny-sdxl": "ip-adapter_tiny-sdxl.safetensors"}
UNETS = {"tiny-sd": sd_unet, "tiny-sdxl": sdxl_unet}  # base → its UNet, drawn under SEED


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


def build_tiny_controlnet(folder: Path) -> None:
    """One ControlNet per base in a subfolder named after it, each `ControlNetModel.from_unet`
    of that base's UNet (see `_steerable`)."""
    import torch
    from diffusers import ControlNetModel

    for base in UNETS:
        unet = _base_unet(base)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(SEED)
            net = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=(8, 16, 16, 16))
            _steerable(net)
        net.save_pretrained(folder / base, safe_serialization=True)


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
