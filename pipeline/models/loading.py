"""What every model loader shares: where a spec's weights are, what a failed load says, the
device and dtype it lands on, and quiet libraries.

A model spec is `embedded:<name>` (a tiny model built offline, see `embedded.py`), a local
folder, or a hub id already in the local Hugging Face cache: nothing is downloaded. The
loaders (`diffusion.py`, `clip.py`, `classifiers.py`) resolve specs and report failures through
these helpers, so each rule is written once.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from pipeline.errors import ModelLoadError
from pipeline.models import embedded
from pipeline.spec.limits import DTYPES
from pipeline.storage.paths import EMBEDDED_PREFIX, model_path


def resolve_device(spec: str) -> str:
    """'auto' → 'cuda' when a GPU is visible, else 'cpu'; anything else unchanged."""
    if spec != "auto":
        return spec
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_dtype(spec: str, device: str):
    """'auto' → float16 on CUDA, float32 elsewhere (CPU half precision is slow and lossy)."""
    import torch

    if spec == "auto":
        return torch.float16 if device.startswith("cuda") else torch.float32
    if spec not in DTYPES:
        raise ValueError(f"unknown dtype {spec!r} (known: auto, {', '.join(DTYPES)})")
    return getattr(torch, spec)


def quiet_libraries() -> None:
    """Batch runs print their own progress: silence the libraries' per-load progress bars."""
    import diffusers.utils.logging as dlog
    import transformers.utils.logging as tlog

    dlog.disable_progress_bar()
    tlog.disable_progress_bar()
    dlog.set_verbosity_error()
    tlog.set_verbosity_error()


def locate(spec: str) -> tuple[str, bool]:
    """(what to hand to from_pretrained, is_embedded) for a model spec."""
    if spec.startswith(EMBEDDED_PREFIX):
        return str(embedded.ensure(spec.removeprefix(EMBEDDED_PREFIX))), True
    path = model_path(spec)
    return (str(path) if path.exists() else spec), False


def unavailable(spec: str, revision: str | None = None) -> str | None:
    """Why diffusion model `spec` cannot be found on this machine without loading it (None when
    it can): a local folder that is not there, a hub id not in the local Hugging Face cache.
    Cheap and torch-free, so a style naming a missing model is refused before any work;
    whether the weights load is for the loader (`loading`)."""
    if spec.startswith(EMBEDDED_PREFIX):
        return None  # built on first use; its name is checked against the embedded roles
    path = model_path(spec)
    if path.is_absolute() or spec.startswith(("./", "../", "~")):
        return None if path.exists() else "no such folder or file"
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(spec, "model_index.json", revision=revision)
    except HFValidationError:
        return "neither a local folder nor a hub id"
    if isinstance(cached, str):
        return None
    return ("not a local folder, and not in the local Hugging Face cache"
            + (f" at revision {revision!r}" if revision else "") + " (nothing is downloaded)")


@contextmanager
def loading(what: str, spec: str):
    """Re-raise whatever a loader raises naming the spec that failed: a folder that is not a
    model fails inside the library in many ways (a missing file, a config without the key it
    reads: KeyError, an unknown class: AttributeError), and each is the same news for the user."""
    try:
        yield
    except ModelLoadError:
        raise
    except Exception as err:  # noqa: BLE001 — see above; the library's error is kept as the cause
        raise ModelLoadError(
            f"cannot load {what} {spec!r}: {type(err).__name__}: {err}\n(a model is embedded:<name>, a local folder "
            "with safetensors weights, or a hub id already in the local Hugging Face cache; "
            "nothing is downloaded)") from err


@contextmanager
def hub_offline():
    """open_clip fetches pretrained tags with huggingface_hub and has no `local_files_only`:
    switch the hub to offline mode for the call, so a tag only loads from the local cache."""
    from huggingface_hub import constants

    before, constants.HF_HUB_OFFLINE = constants.HF_HUB_OFFLINE, True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def adapter_folder(spec: str) -> Path:
    """The local folder of an adapter spec (IP-Adapter, ControlNet): embedded, a path, or a hub
    id's cached snapshot (never downloaded)."""
    path, _ = locate(spec)
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(path, local_files_only=True))
