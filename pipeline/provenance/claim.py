"""The claim: what an image's C2PA manifest says about it, as the manifest definition c2pa's
Builder takes.

The signer's own statements (actions, training-and-mining, the generation assertion) are
*created* assertions; the product photo or earlier image a staged image was edited from is a
gathered `parentOf` ingredient, and a style's style image and structure image, which steered the
model, are `inputTo` ingredients its action names. The prompt appears only as its hash.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.spec.vocabulary import MODES, T2I

SOURCE_TYPE = "http://cv.iptc.org/newscodes/digitalsourcetype/"
GENERATION_LABEL = "com.asset-pipeline.generation"
# C2PA 2.x moved training-and-mining to the CAWG assertion; c2pa-rs validates it cleanly.
TRAINING_MINING_LABEL = "cawg.training-mining"
TRAINING_MINING_USES = (
    "cawg.ai_training", "cawg.ai_generative_training", "cawg.data_mining", "cawg.ai_inference",
)
PARENT_ID = "parent"  # the parent ingredient's label, which the c2pa.opened action refers to


@dataclass(frozen=True)
class Input:
    """An image that steered the model without being edited (`inputTo`): a style image, a structure image."""

    label: str  # the ingredient's label, which the action names ("style_image", "structure_image")
    data: bytes = field(repr=False)
    mime: str
    title: str


@dataclass(frozen=True)
class Overlaid:
    """A brand overlay drawn on the image after it was made: its logo (a `componentOf`
    ingredient) and the exact headline text, with the font's file name."""

    logo: Input | None = None
    headline: str | None = None
    font: str | None = None
    over_clean: bool = False  # drawn over the clean image kept beside it: that image is the claim's parent

    def assertion(self) -> dict[str, Any]:
        return {k: v for k, v in (("headline", self.headline), ("font", self.font),
                                  ("logo", self.logo.title if self.logo else None)) if v is not None}


@dataclass(frozen=True)
class Watermarked:
    """An invisible watermark embedded in the image (provenance/watermark.py): the soft binding's
    algorithm and the payload it carries, as hex."""

    alg: str
    payload: str

    def assertion(self) -> dict[str, Any]:
        """The `c2pa.soft-binding` assertion's data: the algorithm and the payload, over the whole image."""
        return {"alg": self.alg, "blocks": [{"scope": {}, "value": self.payload}], "pad": []}


SOFT_BINDING_LABEL = "c2pa.soft-binding"
WATERMARK_ACTION = "c2pa.watermarked.bound"  # C2PA 2.2: a watermark inserted to bind the manifest
OVERLAY_LABEL = "com.asset-pipeline.overlay"
LOGO_ID = "logo"  # the logo ingredient's label, which the overlay's edit action names


@dataclass(frozen=True)
class Claim:
    """What the manifest says about one image. The prompt appears only as its hash."""

    title: str
    model: str
    model_revision: str | None
    seed: int
    steps: int
    guidance_scale: float
    prompt_sha256: str
    mode: str  # t2i | img2img | inpaint
    item_id: str
    software_agent: str  # "asset-pipeline 0.1.0"
    parent: bytes | None = field(default=None, repr=False)  # the product photo (staging)
    parent_mime: str | None = None
    parent_title: str | None = None
    inputs: tuple[Input, ...] = ()
    overlay: Overlaid | None = None
    watermark: Watermarked | None = None

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        over_clean = self.overlay is not None and self.overlay.over_clean
        if over_clean and self.parent is None:
            raise ValueError("an overlay drawn over the clean image needs that image as its parent")
        if not over_clean and (self.mode == T2I) != (self.parent is None):
            raise ValueError(f"mode {self.mode!r}: a parent image is needed for img2img/inpaint "
                             "and not allowed for t2i")
        if self.parent is not None and not self.parent_mime:
            raise ValueError("parent_mime is required with a parent image")

    def generation(self) -> dict[str, Any]:
        keys = ("model", "model_revision", "seed", "steps", "guidance_scale", "prompt_sha256",
                "mode", "item_id")
        # seed_str: a JavaScript reader's numbers are doubles, exact only to 2**53; seeds are 63 bits.
        return {**{k: getattr(self, k) for k in keys}, "seed_str": str(self.seed)}


def build_manifest(claim: Claim) -> dict[str, Any]:
    """The manifest definition c2pa's Builder takes for `claim`."""
    name, _, version = claim.software_agent.rpartition(" ")
    agent = {"name": name, "version": version} if name else {"name": claim.software_agent}
    steered = {"parameters": {"ingredientIds": [i.label for i in claim.inputs]}} if claim.inputs else {}
    if claim.overlay is not None and claim.overlay.over_clean:  # the clean image opened, the overlay drawn
        actions = [{"action": "c2pa.opened", "softwareAgent": agent, "parameters": {"ingredientIds": [PARENT_ID]}}]
    elif claim.parent is None:
        actions = [{"action": "c2pa.created", "softwareAgent": agent,
                    "digitalSourceType": SOURCE_TYPE + "trainedAlgorithmicMedia", **steered}]
    else:  # staging: the product photo is opened, then edited by the model
        actions = [{"action": "c2pa.opened", "softwareAgent": agent,
                    "parameters": {"ingredientIds": [PARENT_ID]}},
                   {"action": "c2pa.edited", "softwareAgent": agent,
                    "description": f"{claim.mode} with {claim.model}",
                    "digitalSourceType": SOURCE_TYPE + "compositeWithTrainedAlgorithmicMedia", **steered}]
    if claim.overlay is not None:  # then the brand's logo and headline were drawn on it
        logo = {"parameters": {"ingredientIds": [LOGO_ID]}} if claim.overlay.logo else {}
        actions.append({"action": "c2pa.edited", "softwareAgent": agent, "description": "brand overlay: "
                        + " and ".join(k for k in ("logo", "headline") if getattr(claim.overlay, k)), **logo})
    if claim.watermark is not None:  # last: the watermark goes over the finished pixels
        actions.append({"action": WATERMARK_ACTION, "softwareAgent": agent,
                        "description": f"invisible watermark ({claim.watermark.alg}) bound by a soft binding"})
    not_allowed = {use: {"use": "notAllowed"} for use in TRAINING_MINING_USES}
    # "created": the signer itself makes these statements (C2PA 2.x created_assertions), so a
    # validator holds the signer accountable for them; without it c2pa-rs files everything but
    # the hash as gathered (information passed on from elsewhere). Ingredients stay gathered.
    return {
        "claim_generator_info": [agent],
        "title": claim.title,
        "assertions": [
            {"label": "c2pa.actions.v2", "data": {"actions": actions}, "created": True},
            {"label": TRAINING_MINING_LABEL, "data": {"entries": not_allowed}, "created": True},
            {"label": GENERATION_LABEL, "data": claim.generation(), "created": True},
            *([{"label": OVERLAY_LABEL, "data": claim.overlay.assertion(), "created": True}] if claim.overlay else []),
            *([{"label": SOFT_BINDING_LABEL, "data": claim.watermark.assertion(), "created": True}]
              if claim.watermark else []),
        ],
    }


def parent_ingredient(claim: Claim) -> dict[str, Any] | None:
    """The ingredient definition of `claim`'s parent image (`parentOf`), or None for t2i."""
    if claim.parent is None:
        return None
    return {"title": claim.parent_title or "parent", "relationship": "parentOf", "label": PARENT_ID}


def input_ingredients(claim: Claim) -> list[tuple[dict[str, Any], Input]]:
    """The ingredient definition of each image that steered the model (`inputTo`), and of an
    overlay's logo (`componentOf`), with it."""
    found = [({"title": i.title, "relationship": "inputTo", "label": i.label}, i) for i in claim.inputs]
    if claim.overlay is not None and (logo := claim.overlay.logo) is not None:
        found.append(({"title": logo.title, "relationship": "componentOf", "label": LOGO_ID}, logo))
    return found
