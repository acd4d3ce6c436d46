"""Models: the only place weights load.

A model spec is `embedded:<name>` (a tiny model built offline, see `embedded.py`), a local
folder, or a hub id that is already in the local Hugging Face cache: nothing is downloaded
(`local_files_only=True`). Weights load from safetensors only, never with remote code.
Heavy libraries are imported inside the functions, so importing any of these modules is instant.

- `loading.py`: what every loader shares (locating a spec, the load error, device and dtype)
- `diffusion.py`: the diffusion pipelines over one set of weights, and throughput options
- `families.py`: what a family (sd, sdxl, flux, sd3) means: modes, guidance, token windows
- `clip.py`: the CLIP scorer's model, transform and tokenizer
- `classifiers.py`: moderation's image and prompt classifiers and the CLIP embedding head
- `embedded.py`, `tokenizer.py`: tiny models built offline for tests and demos (recipes in
  `tiny_unet.py`, `tiny_transformers.py`, `tiny_judges.py`)
- `fingerprint.py`: what identifies a model's weights in an item id
"""
