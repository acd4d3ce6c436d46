"""Expand manifest rows × candidates into the plan: resolved prompts, seeds, item ids, paths.

Pure data (polars + hashlib), no torch: `plan` of a large manifest is fast and needs no GPU.

Seeds (DESIGN.md "Seeds and reproducibility"):
- the row's `seed` is candidate 0's seed; candidate k > 0 derives from it;
- else the style's pinned `seeds`, in order; candidates past the list derive from its first
  seed, so every product of a style starts from the same noise;
- else blake2b(job seed, row id, candidate index).
`item_id` hashes everything that shapes the image and its file: the idempotency key.
"""

from __future__ import annotations

import hashlib
import os

import numpy as np
import polars as pl
import pyarrow as pa

from pipeline import schema
from pipeline.config import JobConfig
from pipeline.manifest import Inputs, resolve_input_uri, styles_base_dir

SEED_MASK = 2**63 - 1
_SEP = "\x1f"
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


def _blake(*parts: object, size: int = 8) -> bytes:
    return hashlib.blake2b(_SEP.join(map(str, parts)).encode("utf-8"), digest_size=size).digest()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from any parts, stable across processes and Python versions."""
    return int.from_bytes(_blake(*parts), "big") & SEED_MASK


def candidate_seed(job_seed: int, row_id: str, k: int, row_seed: int | None,
                   style_seeds: list[int] | None) -> tuple[int, str]:
    """The seed of candidate k of a row, and where it came from (row | style | derived)."""
    if row_seed is not None:
        return (row_seed, "row") if k == 0 else (derive_seed("row", row_seed, k), "row")
    if style_seeds:
        if k < len(style_seeds):
            return style_seeds[k], "style"
        return derive_seed("style", style_seeds[0], k), "style"
    return derive_seed("job", job_seed, row_id, k), "derived"


ITEM_KEY_COLUMNS = ("id", "candidate", "prompt", "negative_prompt", "style", "seed", "model",
                    "model_revision", "scheduler", "mode", "steps", "guidance_scale", "strength",
                    "width", "height", "init_image", "mask", "lora", "lora_scale", "format")


def item_id(values: dict) -> str:
    """The idempotency key of a candidate: same inputs → same id → a rerun skips it."""
    return _blake(*(values[c] for c in ITEM_KEY_COLUMNS), size=16).hex()


def _mode(init_image: str | None, mask: str | None) -> str:
    if init_image is None:
        return "t2i"
    return "inpaint" if mask is not None else "img2img"


def _has_alpha(uri: str) -> bool:
    import fsspec
    from PIL import Image

    with fsspec.open(uri, "rb") as f, Image.open(f) as im:
        return im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info)


def build_plan(inputs: Inputs, cfg: JobConfig) -> pa.Table:
    """One row per candidate, in manifest order, with passthrough columns at the end."""
    g, job, m = cfg.generate, cfg.job, cfg.models
    c = pl.col
    styles = inputs.styles.drop("__row").rename(
        {k: f"s_{k}" for k in inputs.styles.columns if k not in ("style", "__row")})
    df = inputs.manifest.join(styles, on="style", how="left", maintain_order="left")
    df = df.with_columns(
        c("s_prompt_template").fill_null("{prompt}").alias("__template"),
        c("negative_prompt").fill_null(c("s_negative_prompt")).fill_null("").alias("__negative"),
        c("s_steps").fill_null(g.steps).alias("__steps"),
        c("s_guidance_scale").fill_null(g.guidance_scale).alias("__guidance"),
        c("strength").fill_null(c("s_strength")).fill_null(g.strength).alias("__strength"),
        c("width").fill_null(c("s_width")).fill_null(g.width).alias("__width"),
        c("height").fill_null(c("s_height")).fill_null(g.height).alias("__height"),
        c("num_candidates").fill_null(c("s_num_candidates")).fill_null(job.num_candidates).alias("__n"),
        c("keep").fill_null(c("s_keep")).fill_null(job.keep).alias("__keep"),
        c("s_clip_threshold").fill_null(cfg.filter.clip_threshold).alias("__clip_threshold"),
    )
    style_base = styles_base_dir(cfg)
    ext = EXTENSIONS[cfg.output.format]
    out: dict[str, list] = {f.name: [] for f in schema.PLAN_FIELDS}
    alpha_cache: dict[str, bool] = {}

    for r in df.iter_rows(named=True):
        init = resolve_input_uri(r["product_image"], inputs.base_dir)
        mask = resolve_input_uri(r["mask"], inputs.base_dir)
        if init is None and r["s_reference_image"] is not None:
            init = resolve_input_uri(r["s_reference_image"], style_base)
        elif init is not None and mask is None and r["product_image"] is not None:
            if init not in alpha_cache:
                alpha_cache[init] = _has_alpha(init)
            mask = "alpha" if alpha_cache[init] else None
        mode = _mode(init, mask)
        prompt = r["__template"].replace("{prompt}", r["prompt"])
        for k in range(r["__n"]):
            seed, seed_source = candidate_seed(job.seed, r["id"], k, r["seed"], r["s_seeds"])
            row = {
                "id": r["id"], "row": r["__row"], "candidate": k, "source_prompt": r["prompt"],
                "prompt": prompt, "negative_prompt": r["__negative"], "style": r["style"],
                "seed": seed, "seed_source": seed_source, "model": m.diffusion,
                "model_revision": m.diffusion_revision, "scheduler": m.scheduler, "mode": mode,
                "steps": r["__steps"], "guidance_scale": float(r["__guidance"]),
                "strength": float(r["__strength"]) if mode != "t2i" else None,
                "width": r["__width"], "height": r["__height"], "num_candidates": r["__n"],
                "keep": r["__keep"], "clip_threshold": float(r["__clip_threshold"]),
                "init_image": init, "mask": mask, "lora": None, "lora_scale": None,
                "format": cfg.output.format, "truncated": None,
            }
            row["item_id"] = item_id(row)
            row["path"] = image_path(row["item_id"], ext)
            for name in out:
                out[name].append(row[name])

    table = pa.Table.from_pydict(out, schema=schema.PLAN_SCHEMA)
    if inputs.passthrough:
        # Repeat each manifest row's passthrough values once per candidate, types kept.
        counts = df["__n"].to_numpy()
        pt = inputs.manifest.select(inputs.passthrough).to_arrow()
        pt = pt.take(pa.array(np.repeat(np.arange(len(counts)), counts)))
        for name in inputs.passthrough:
            table = table.append_column(pt.schema.field(name), pt.column(name))
    return table


def image_path(item: str, ext: str) -> str:
    """Output path of a candidate, relative to the output folder: from the item id only."""
    return os.path.join("images", item[:2], f"{item}.{ext}")
