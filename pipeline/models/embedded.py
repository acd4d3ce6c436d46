"""The embedded default models: tiny, untrained, but the real architectures and file layouts.

`embedded:tiny-sd` is a Stable Diffusion pipeline folder, `embedded:tiny-sdxl` an SDXL one (two
text encoders, micro-conditioning; for tests of what SDXL does differently), `embedded:tiny-flux`,
`embedded:tiny-flux-schnell` and `embedded:tiny-sd3` the diffusion-transformer families (CLIP and
T5 text encoders, flow matching), `embedded:tiny-clip` an open_clip config + safetensors file,
`embedded:tiny-nsfw` a ViT image classifier folder, `embedded:tiny-ip-adapter` an IP-Adapter and
`embedded:tiny-controlnet` a ControlNet for every embedded base. Each is built from a config under a
fixed seed, saved with safetensors, and loaded back through the same `from_pretrained` /
`create_model` / `load_ip_adapter` calls as SD-turbo, FLUX.1, ViT-L-14, an NSFW ViT classifier or
h94/IP-Adapter, so a job runs end to end offline and a real checkpoint is a one-line change of the
job file. The recipes live by family (`tiny_unet.py`, `tiny_transformers.py`, `tiny_adapters.py`,
`tiny_judges.py`); this module is their registry and cache.

Builds are cached under `$ASSET_PIPELINE_MODELS` (default `~/.cache/asset-pipeline/models`) in
a folder named with the recipe's version tag: change a recipe, bump its version.
`python -m pipeline.models.embedded` builds them all and prints where.
"""

from __future__ import annotations

import os
from pathlib import Path

# name → recipe version; bump a version whenever that build function changes.
VERSIONS = {"tiny-sd": 1, "tiny-sdxl": 1, "tiny-flux": 1, "tiny-flux-schnell": 1, "tiny-sd3": 1,
            "tiny-clip": 1, "tiny-nsfw": 1, "tiny-clip-head": 1, "tiny-ip-adapter": 2, "tiny-controlnet": 2}
# name → the [models] key it serves: what the job spec admits as `embedded:<name>` there.
ROLES = {"tiny-sd": "diffusion", "tiny-sdxl": "diffusion", "tiny-flux": "diffusion", "tiny-flux-schnell": "diffusion",
         "tiny-sd3": "diffusion", "tiny-clip": "clip", "tiny-nsfw": "moderation", "tiny-clip-head": "moderation",
         "tiny-ip-adapter": "ip_adapter", "tiny-controlnet": "controlnet"}


def cache_root() -> Path:
    return Path(os.environ.get("ASSET_PIPELINE_MODELS")
                or Path.home() / ".cache" / "asset-pipeline" / "models")


def recipe_tag(name: str) -> str:
    """`v<N>`: the version of the build recipe (part of the cache folder name)."""
    if name not in VERSIONS:
        raise ValueError(f"unknown embedded model {name!r} (known: {', '.join(VERSIONS)})")
    return f"v{VERSIONS[name]}"


def _builders() -> dict:
    """name → build function (imported here: the families' modules import torch lazily too)."""
    from pipeline.models import tiny_adapters, tiny_judges, tiny_transformers, tiny_unet

    return {"tiny-sd": tiny_unet.build_tiny_sd, "tiny-sdxl": tiny_unet.build_tiny_sdxl,
            "tiny-flux": tiny_transformers.build_tiny_flux,
            "tiny-flux-schnell": tiny_transformers.build_tiny_flux_schnell,
            "tiny-sd3": tiny_transformers.build_tiny_sd3,
            "tiny-clip": tiny_judges.build_tiny_clip, "tiny-nsfw": tiny_judges.build_tiny_nsfw,
            "tiny-clip-head": tiny_judges.build_tiny_clip_head,
            "tiny-ip-adapter": tiny_adapters.build_tiny_ip_adapter,
            "tiny-controlnet": tiny_adapters.build_tiny_controlnet}


def build(name: str, folder: Path) -> None:
    """Build embedded model `name` into `folder` (created if missing). Deterministic."""
    recipe_tag(name)  # validates the name
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _builders()[name](folder)


def ensure(name: str) -> Path:
    """The cached folder of embedded model `name`, built on first use.

    Built whole beside the target and renamed into place (`pipeline.storage.write.atomic_folder`):
    a folder that exists is complete. When two processes race, the first rename wins and the
    loser drops its copy.
    """
    from pipeline.storage.write import atomic_folder

    final = cache_root() / f"{name}-{recipe_tag(name)}"
    if not final.is_dir():
        atomic_folder(final, lambda folder: build(name, folder))
    return final


if __name__ == "__main__":
    for n in VERSIONS:
        print(n, ensure(n))
