"""Builders for jobs, manifests and styles tables written to a temporary folder."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.spec.config import JobConfig
from pipeline.spec.load import load_job

STYLES = {
    "style": ["studio", "brand"],
    "prompt_template": ["{prompt}, studio photo", "{prompt}, brand look"],
    "negative_prompt": ["blurry", None],
    "steps": pa.array([2, 3], pa.int64()),
    "guidance_scale": [4.0, 5.0],
    "seeds": pa.array([None, [11, 22]], pa.list_(pa.int64())),
}


def write_job(folder: Path, rows: dict | pa.Table, styles: dict | pa.Table | None = STYLES,
              extra: str = "", **job_keys) -> Path:
    """A job file + manifest (+ styles) in `folder`; returns the job path."""
    folder.mkdir(parents=True, exist_ok=True)
    table = rows if isinstance(rows, pa.Table) else pa.table(rows)
    pq.write_table(table, folder / "manifest.parquet")
    lines = ["[job]", 'name = "t"', 'manifest = "manifest.parquet"']
    job_keys.setdefault("output", "out")
    if styles is not None:
        pq.write_table(styles if isinstance(styles, pa.Table) else pa.table(styles), folder / "styles.parquet")
        lines.append('styles = "styles.parquet"')
    for k, v in job_keys.items():
        lines.append(f"{k} = {v!r}" if not isinstance(v, str) else f'{k} = "{v}"')
    text = "\n".join(lines) + "\n" + extra
    if "[generate]" not in extra:
        text += "\n[generate]\nsteps = 2\nwidth = 64\nheight = 64\nbatch_size = 4\n"
    path = folder / "job.toml"
    path.write_text(text)
    return path


def save_cutout(path: Path) -> Path:
    """A product cut-out: an opaque green box on a transparent 48x32 canvas (staged by its alpha)."""
    from PIL import Image

    im = Image.new("RGBA", (48, 32), (0, 0, 0, 0))
    im.paste((20, 200, 20, 255), (10, 5, 30, 28))
    im.save(path)
    return path


def job(folder: Path, rows: dict | pa.Table, **kw) -> JobConfig:
    return load_job(write_job(folder, rows, **kw))


def make_lora(path: Path, seed: int = 0, model: str = "embedded:tiny-sd") -> Path:
    """A small LoRA for an embedded tiny UNet (SD or SDXL), saved as diffusers saves LoRAs
    (safetensors, by the model's own pipeline class)."""
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    from pipeline.models.diffusion import load_diffusion

    pipes = load_diffusion(model, revision=None, scheduler=None, device="cpu", dtype=torch.float32)
    unet = pipes.t2i.unet
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_k", "to_q", "to_v", "to_out.0"]))
    with torch.no_grad():  # peft starts B at zero (no effect): give it weights that matter
        gen = torch.Generator().manual_seed(seed)
        for name, param in unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * 0.5)
    path.mkdir(parents=True, exist_ok=True)
    type(pipes.t2i).save_lora_weights(path, unet_lora_layers=get_peft_model_state_dict(unet),
                                      safe_serialization=True)
    return path / "pytorch_lora_weights.safetensors"


def make_transformer_lora(path: Path, model: str, seed: int = 0, scale: float = 1.0) -> Path:
    """A small LoRA on the attention projections of an embedded diffusion transformer
    (`tiny-flux`, `tiny-sd3`), saved by its pipeline class's `save_lora_weights` (diffusers'
    format, safetensors), as a LoRA trained with diffusers' scripts is."""
    import diffusers
    import torch
    from peft import LoraConfig, get_peft_model_state_dict

    from pipeline.models import embedded

    folder = embedded.ensure(model)
    index = json.loads((folder / "model_index.json").read_text())
    transformer = getattr(diffusers, index["transformer"][1]).from_pretrained(folder, subfolder="transformer")
    transformer.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    with torch.no_grad():  # peft starts B at zero (no effect): give it weights that matter
        gen = torch.Generator().manual_seed(seed)
        for name, param in transformer.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=gen) * scale)
    path.mkdir(parents=True, exist_ok=True)
    getattr(diffusers, index["_class_name"]).save_lora_weights(
        path, transformer_lora_layers=get_peft_model_state_dict(transformer), safe_serialization=True)
    return path / "pytorch_lora_weights.safetensors"


def signed_output(folder: Path, n: int, size: int = 64, fmt: str = "png", watermark: bool = False,
                  rejected: int = 0) -> Path:
    """A finished output without a run: `n` small images written and signed the pipeline's way
    (`encode_image`, the output's demo signer, `Output.put`), a results table listing them (and
    `rejected` rows with no file), no shards. For `verify`'s tests and bench/verify.py."""
    import hashlib

    import numpy as np

    from pipeline.provenance import watermark as wm
    from pipeline.provenance.claim import Claim, Watermarked
    from pipeline.provenance.signer import Signer
    from pipeline.spec.config import SignerSection
    from pipeline.storage.layout import RESULTS, image_path
    from pipeline.storage.store import Output
    from pipeline.storage.tables import to_bytes
    from pipeline.storage.write import encode_image, sha256_hex

    out = Output(str(folder))
    signer = Signer.from_section(SignerSection(mode="demo"), out, quiet=True)
    method = next(iter(wm.METHODS.values())) if watermark else None
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n + rejected):
        item = hashlib.blake2b(f"item {i}".encode(), digest_size=32).hexdigest()
        row = {"id": f"row{i}", "item_id": item, "status": "rejected", "path": None, "sha256": None,
               "c2pa_label": None, "watermark": None}
        rows.append(row)
        if i >= n:
            continue
        # colour blocks with a little grain: about 2 bytes a pixel in PNG, as a generated image
        blocks = rng.integers(0, 256, (size // 8, size // 8, 3)).repeat(8, 0).repeat(8, 1)
        pixels = np.clip(blocks + rng.normal(0, 3, blocks.shape), 0, 255).astype(np.uint8)
        payload = wm.payload_for(item, method) if method else None
        if method:
            pixels = wm.embed(pixels, method, payload)
        data, mime = encode_image(pixels, fmt)
        claim = Claim(title=f"{item}.{fmt}", model="synthetic", model_revision=None, seed=i, steps=0,
                      guidance_scale=0.0, prompt_sha256="0" * 64, mode="t2i", item_id=item,
                      software_agent="asset-pipeline tests",
                      watermark=Watermarked(method.alg, payload) if method else None)
        signed = signer.sign(data, mime, claim)
        rel = image_path(item, fmt)
        out.put(rel, signed)
        row.update(status="written", path=rel, sha256=sha256_hex(signed), c2pa_label=signer.verify(signed, mime).label,
                   watermark=method.name if method else None)
    out.put(RESULTS, to_bytes(pa.Table.from_pylist(rows, schema=pa.schema(
        [(c, pa.string()) for c in ("id", "item_id", "status", "path", "sha256", "c2pa_label", "watermark")]))))
    return folder


def as_older_release(out: Path, drop: tuple[str, ...] = ()) -> list[Path]:
    """Turn an output folder into one an older release left: no consolidated state, its
    committed outcomes in one shard (lacking the columns `drop`). Returns the shard files."""
    import shutil

    state = out / "_state"
    if (state / "current.json").exists():
        current = json.loads((state / "current.json").read_text())
        parts = [pq.read_table(out / rel) for rel in current["parts"].values()]
        table = pa.concat_tables(parts).drop_columns(list(drop))
        (out / "_shards").mkdir(exist_ok=True)
        pq.write_table(table, out / "_shards" / "part-000000-0older0.parquet")
        embeddings = [pq.read_table(out / rel) for rel in current["embeddings"].values()]
        if embeddings:
            (out / "_embeddings").mkdir(exist_ok=True)
            pq.write_table(pa.concat_tables(embeddings), out / "_embeddings" / "part-000000-0older0.parquet")
    shutil.rmtree(state, ignore_errors=True)
    for shard in (out / "_shards").glob("part-*.parquet"):
        pq.write_table(pq.read_table(shard).drop_columns([c for c in drop if c in pq.read_schema(shard).names]), shard)
    return sorted((out / "_shards").glob("part-*.parquet"))


def committed_part(out: Path, kind: str = "parts") -> pa.Table:
    """The consolidated state of an output: every latest outcome (`parts`), or every image
    embedding (`embeddings`), as one table (for tests: small outputs)."""
    current = json.loads((out / "_state" / "current.json").read_text())
    return pa.concat_tables([pq.read_table(out / rel) for rel in sorted(current[kind].values())])
