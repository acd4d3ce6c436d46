"""What conditions a generation besides its prompt: a style image through the model's IP-Adapter,
a structure image's edge map through its ControlNet. Prepared once per distinct image on the
actor (an image's embeds, an edge map at a size), and handed to each pipeline call.

A model that has an IP-Adapter loaded needs embeds in every call: a candidate without a style
image gets the adapter's scale 0 (the adapter is then skipped, pixels as without it), so a row
regenerated alone, where no batch mate loaded the adapter, comes out the same.
"""

from __future__ import annotations

from typing import Any

BLANK = ""  # the key of the black image's embeds (an empty URI is never a style image)


def _control_argument(pipe) -> str:
    """Where a ControlNet pipeline takes the structure image: `control_image`, except the UNet
    text-to-image one, whose `image` is it (it has no starting image)."""
    import inspect

    return "control_image" if "control_image" in inspect.signature(pipe.__call__).parameters else "image"


class Conditioning:
    def __init__(self, pipes, ip_adapter: str | None = None, controlnet: str | None = None):
        from pipeline.models.controlnet import load_controlnet
        from pipeline.models.ip_adapter import load_ip_adapter

        self.base, self.controlled, self.ip = pipes, None, ip_adapter is not None
        if ip_adapter:  # before the ControlNet: its pipelines take the image encoder from t2i
            load_ip_adapter(pipes, ip_adapter)
        if controlnet:
            self.controlled = load_controlnet(pipes, controlnet)
        self.family = pipes.family.name if pipes.family else None
        self._embeds: dict[str | None, Any] = {}
        self._edges: dict[tuple[str, int, int], Any] = {}

    def pipelines(self, first: dict):
        """The pipelines a call of candidates like `first` runs on: ControlNet ones for a structure image."""
        if first["structure_image"] is None:
            return self.base
        if self.controlled is None:
            raise ValueError("a structure image needs [models].controlnet, and it was not loaded")
        return self.controlled

    def arguments(self, pipe, cands: list[dict], mode: str) -> dict[str, Any]:
        """The call's conditioning arguments (a call shares its style image and weights: group_key)."""
        from pipeline.models.ip_adapter import style_embeds

        first, kwargs = cands[0], {}
        if self.ip:
            uri = first["style_image"]
            self.base.t2i.set_ip_adapter_scale(float(first["style_image_scale"]) if uri else 0.0)
            kwargs.update(style_embeds(pipe, self._embed(uri), float(first["guidance_scale"]), self.family,
                                       blank=self._embed(BLANK)))
        elif first["style_image"] is not None:
            raise ValueError("a style image needs [models].ip_adapter, and it was not loaded")
        if first["structure_image"] is not None:
            edges = [self._edge_map(c["structure_image"], int(c["width"]), int(c["height"])) for c in cands]
            kwargs[_control_argument(pipe)] = edges
            kwargs["controlnet_conditioning_scale"] = float(first["structure_scale"])
        return kwargs

    def _embed(self, uri: str | None):
        """A style image's embeds, once per image; a grey image's for a call without one (scale
        0), a black one's for FLUX's unconditional image (BLANK)."""
        if uri not in self._embeds:
            from PIL import Image

            from pipeline.models.ip_adapter import embed_style_image
            from pipeline.storage.uris import load_image

            fill = {None: (127, 127, 127), BLANK: (0, 0, 0)}
            image = Image.new("RGB", (64, 64), fill[uri]) if uri in fill else load_image(uri, "RGB")
            self._embeds[uri] = embed_style_image(self.base.t2i, image, self.family)
        return self._embeds[uri]

    def _edge_map(self, uri: str, width: int, height: int):
        """The structure image's Canny edges at the generation's size, as the PIL image diffusers takes."""
        key = (uri, width, height)
        if key not in self._edges:
            import numpy as np
            from PIL import Image

            from pipeline.stages.structure import canny_edges
            from pipeline.storage.uris import load_image

            image = load_image(uri, "RGB").resize((width, height), Image.Resampling.LANCZOS)
            self._edges[key] = Image.fromarray(canny_edges(np.asarray(image)))
            if len(self._edges) > 256:
                self._edges.pop(next(iter(self._edges)))
        return self._edges[key]
