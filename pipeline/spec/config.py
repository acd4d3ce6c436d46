"""The job spec as the pipeline reads it: frozen, typed sections, one per `[section]` of a job file.

`pipeline.spec.load` makes one from a job file (every key checked, paths resolved);
`pipeline.spec.job_checks` holds the rules its values obey. A key's default here is the job's
default; the comments say what each key means.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

from pipeline.spec.limits import CHOICES


@dataclass(frozen=True)
class JobSection:
    name: str = "job"
    seed: int = 0
    manifest: str = ""
    styles: str = ""
    output: str = "out"
    num_candidates: int = 1
    keep: int = 1
    max_failed_fraction: float = 0.1
    max_prompt_chars: int = 2000
    # Where product/mask/reference/LoRA URIs may point (folders or bucket prefixes such as
    # "s3://bucket/catalogue"); empty = anywhere readable with an allowed scheme.
    allowed_input_roots: tuple[str, ...] = ()
    # URI schemes inputs may use ("file" = local paths); http(s) is off: a manifest row must not
    # make every actor fetch an arbitrary address.
    allowed_input_schemes: tuple[str, ...] = ("file", "s3", "gs", "gcs", "az", "abfs")


@dataclass(frozen=True)
class ModelsSection:
    # Diffusers pipeline: "embedded:tiny-sd", a local folder, or a hub id (offline cache).
    diffusion: str = "embedded:tiny-sd"
    diffusion_revision: str | None = None
    scheduler: str | None = None
    # open_clip: an architecture name plus a weights file (or an embedded name).
    clip: str = "embedded:tiny-clip"
    clip_pretrained: str | None = None
    # transformers image classifier for image moderation.
    moderation: str = "embedded:tiny-nsfw"
    unsafe_labels: tuple[str, ...] = ("nsfw",)
    # Adapters, loaded only when a style asks for them: an IP-Adapter folder (its image encoder
    # in image_encoder/) for styles' `style_image`, a ControlNet for their `structure_image`.
    ip_adapter: str | None = None
    controlnet: str | None = None
    # Optional transformers text classifier for prompt moderation.
    prompt_classifier: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # one of CHOICES["dtype"] (limits.py)
    # Throughput options, mostly for GPUs (see bench/RESULTS.md); off by default.
    channels_last: bool = False
    compile: bool = False  # torch.compile of the UNet/transformer: slow first batch of each shape
    vae_slicing: bool = False  # decode a batch one image at a time: less memory for large batches
    vae_tiling: bool = False  # decode in tiles: large images in less memory


@dataclass(frozen=True)
class GenerateSection:
    steps: int = 4
    guidance_scale: float = 5.0
    width: int = 64
    height: int = 64
    strength: float = 0.75  # image-to-image: how far from the product photo to move
    # Background staging (inpaint): 1.0 generates the background from noise; lower keeps some
    # of the neutral placeholder behind the product. A row or style `strength` overrides both.
    inpaint_strength: float = 1.0
    # A reviewer's `refine` without a strength: how far the new image moves from the chosen one.
    refine_strength: float = 0.5
    # A style image's weight through the IP-Adapter, and a structure image's through the
    # ControlNet, where the style does not give its own.
    # FLUX reads a negative prompt only in a second, true classifier-free pass: above 1 it runs.
    true_cfg_scale: float = 1.0
    style_image_scale: float = 0.6
    structure_scale: float = 1.0
    batch_size: int = 4


@dataclass(frozen=True)
class FilterSection:
    clip_threshold: float = 0.0
    image_unsafe_threshold: float = 0.5
    prompt_unsafe_threshold: float = 0.5
    blocked_terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSection:
    format: str = "png"  # one of FORMATS (limits.py)
    png_compress_level: int = 1
    jpeg_quality: int = 92
    webp_quality: int = 90
    write_rejected: bool = False
    # A small unsigned WebP of every judged candidate (`_previews/`), so the report shows the
    # runners-up a reviewer chooses from; never an asset (stages/preview.py).
    previews: bool = True
    shard_rows: int = 256


@dataclass(frozen=True)
class FormatsSection:
    """Channel formats of each image (spec/channel_formats.py): every written image's, or only
    the approved ones' (`from`), each a child candidate outpainted from it."""

    sizes: tuple[str, ...] = ()  # "9:16", "1.91:1", "300x250"; a style's `formats` column replaces them
    placement: str = "center"  # where the source sits on the canvas: center, left, right, top, bottom
    # How far the margins move from the source's mirrored, blurred edges (1.0: from noise alone)
    strength: float = 0.9
    source: str = field(default="written", metadata={"key": "from"})  # "written" or "approved"


@dataclass(frozen=True)
class OverlaySection:
    """Brand overlays: the manifest column a row's headline is read from (a style's
    `headline_font` draws it; its `logo` is placed beside it)."""

    headline_column: str = "headline"
    # The image as generated is kept beside the overlaid one (`clean_path`), signed, as the overlaid
    # one's parent: refinements and channel formats start from it. Off: the overlaid image alone,
    # and no refinement or format of an overlaid image.
    keep_clean: bool = True


@dataclass(frozen=True)
class WatermarkSection:
    """An invisible watermark embedded before signing, bound to the manifest by a soft binding,
    so `identify` finds an image's record from a copy a platform stripped (provenance/watermark.py)."""

    enabled: bool = False
    method: str = CHOICES["watermark_method"][0]


@dataclass(frozen=True)
class SignerSection:
    # demo: a throwaway CA + signer made in the output folder. files: real keys.
    mode: str = "demo"
    cert_chain: str | None = None  # PEM file: end-entity first, then intermediates
    private_key: str | None = None  # PEM file
    cert_chain_env: str | None = None  # or: environment variables holding the PEM text
    private_key_env: str | None = None
    trust_anchors: str | None = None  # PEM file of CAs to trust when verifying
    tsa_url: str | None = None
    thumbnail: bool = False
    algorithm: str = "es256"


@dataclass(frozen=True)
class ClusterSection:
    address: str | None = None  # None: start a local Ray instance
    generate_actors: int = 0  # 0: one per GPU, or 1 on a CPU-only cluster
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 0.5
    # 0: sized from the spare CPUs on GPU clusters; none on CPU-only runs using every core
    # (the generate actor writes its own images there).
    write_actors: int = 0
    # Torch threads of a generate actor on CPU; 0: every core of its node (Ray would give a
    # fractional-CPU actor one thread, halving CPU generation on a small machine).
    torch_threads: int = 0
    cpus_per_writer: float = 0.5
    # Diffusion models a generate actor keeps loaded when a job mixes models (styles' own
    # `model`): past this many, the least recently used is dropped. Raise it where a node's
    # GPU memory holds several; an actor's units come a model at a time, so it switches rarely.
    models_per_actor: int = 1


@dataclass(frozen=True)
class Throughput:
    """Measured model-actor seconds per image of one model and shape at `steps` denoising steps;
    other step counts scale linearly."""

    model: str
    width: int
    height: int
    steps: int
    seconds_per_image: float


@dataclass(frozen=True)
class CostSection:
    gpu_hour_usd: float | None = None  # the price of a GPU-hour; None: no money figures
    gpus: int = 0  # GPUs the estimate assumes; 0: [cluster].generate_actors * gpus_per_actor, else 1
    throughput: tuple[Throughput, ...] = ()  # [[cost.throughput]] tables

    def gpu_count(self, cluster: ClusterSection) -> float:
        if self.gpus:
            return self.gpus
        return cluster.generate_actors * cluster.gpus_per_actor if cluster.generate_actors else 1


@dataclass(frozen=True)
class JobConfig:
    job: JobSection = field(default_factory=JobSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    filter: FilterSection = field(default_factory=FilterSection)
    output: OutputSection = field(default_factory=OutputSection)
    signer: SignerSection = field(default_factory=SignerSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    formats: FormatsSection = field(default_factory=FormatsSection)
    overlay: OverlaySection = field(default_factory=OverlaySection)
    watermark: WatermarkSection = field(default_factory=WatermarkSection)
    cost: CostSection | None = None  # None: no [cost] section, no estimate
    source: str = ""  # the job file this came from

    def replace(self, section: str, **changes: Any) -> JobConfig:
        """A copy with some keys of one section changed (CLI overrides)."""
        new = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: new})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTION_TYPES = {  # [section] name → its typed section
    "job": JobSection,
    "models": ModelsSection,
    "generate": GenerateSection,
    "filter": FilterSection,
    "output": OutputSection,
    "signer": SignerSection,
    "cluster": ClusterSection,
    "formats": FormatsSection,
    "overlay": OverlaySection,
    "watermark": WatermarkSection,
    "cost": CostSection,
}
