"""Arrow schemas of the manifest, styles, plan and results, and the status vocabulary.

The single place column names live: other modules import these names, never spell them.
"""

from __future__ import annotations

import pyarrow as pa

# ── manifest ────────────────────────────────────────────────────────────────
MANIFEST_REQUIRED = {"id": pa.string(), "prompt": pa.string()}
MANIFEST_OPTIONAL = {
    "style": pa.string(),
    "negative_prompt": pa.string(),
    "seed": pa.int64(),
    "num_candidates": pa.int64(),
    "keep": pa.int64(),
    "width": pa.int64(),
    "height": pa.int64(),
    "strength": pa.float64(),
    "product_image": pa.string(),
    "mask": pa.string(),
    "headline": pa.string(),  # the text a style's brand overlay draws ([overlay].headline_column names another)
}
MANIFEST_COLUMNS = {**MANIFEST_REQUIRED, **MANIFEST_OPTIONAL}

# ── styles ──────────────────────────────────────────────────────────────────
STYLES_REQUIRED = {"style": pa.string()}
STYLES_OPTIONAL = {
    "prompt_template": pa.string(),
    "negative_prompt": pa.string(),
    "steps": pa.int64(),
    "guidance_scale": pa.float64(),
    "seeds": pa.list_(pa.int64()),
    "width": pa.int64(),
    "height": pa.int64(),
    "strength": pa.float64(),
    "num_candidates": pa.int64(),
    "keep": pa.int64(),
    "model": pa.string(),  # this style's diffusion model, else the job's [models].diffusion
    "model_revision": pa.string(),  # the hub revision of the style's own model
    "lora": pa.string(),
    "lora_scale": pa.float64(),
    "reference_image": pa.string(),
    "style_image": pa.string(),  # a brand look through an IP-Adapter ([models].ip_adapter)
    "style_image_scale": pa.float64(),
    "structure_image": pa.string(),  # a layout through a ControlNet on its edge map ([models].controlnet)
    "structure_scale": pa.float64(),
    "clip_threshold": pa.float64(),
    "formats": pa.list_(pa.string()),  # channel formats of this style's images, else the job's [formats].sizes
    # A brand overlay, drawn on each written image (stages/overlay.py): a logo, and the row's headline
    "logo": pa.string(),  # an image with alpha (a PNG)
    "logo_position": pa.string(),  # limits.CHOICES["position"]; default bottom-right
    "logo_size": pa.float64(),  # its longer side as a fraction of the image's shorter side; default 0.15
    "headline_font": pa.string(),  # a TrueType / OpenType file
    "headline_color": pa.string(),  # "#RRGGBB"; default white
    "headline_position": pa.string(),  # default top
}
STYLES_COLUMNS = {**STYLES_REQUIRED, **STYLES_OPTIONAL}

# ── plan: one row per candidate ─────────────────────────────────────────────
PLAN_FIELDS = [
    pa.field("id", pa.string()),
    pa.field("row", pa.int64()),  # 0-based row number in the manifest
    pa.field("candidate", pa.int64()),
    pa.field("item_id", pa.string()),
    pa.field("source_prompt", pa.string()),  # the row's prompt, before the template
    pa.field("prompt", pa.string()),  # resolved through the style's template
    pa.field("negative_prompt", pa.string()),
    pa.field("style", pa.string()),
    pa.field("seed", pa.int64()),
    pa.field("seed_source", pa.string()),  # vocabulary.SEED_SOURCES
    pa.field("model", pa.string()),
    pa.field("model_revision", pa.string()),
    pa.field("scheduler", pa.string()),
    pa.field("mode", pa.string()),  # MODES
    pa.field("steps", pa.int64()),
    pa.field("guidance_scale", pa.float64()),
    pa.field("strength", pa.float64()),
    pa.field("width", pa.int64()),
    pa.field("height", pa.int64()),
    pa.field("num_candidates", pa.int64()),
    pa.field("keep", pa.int64()),
    pa.field("clip_threshold", pa.float64()),
    pa.field("init_image", pa.string()),  # resolved product or reference image URI
    pa.field("mask", pa.string()),  # resolved mask URI, "alpha" (from the product), or null
    pa.field("style_reference", pa.string()),  # the style's reference image URI: brand consistency
    pa.field("lora", pa.string()),
    pa.field("lora_scale", pa.float64()),
    pa.field("style_image", pa.string()),  # resolved URI; null: no IP-Adapter
    pa.field("style_image_scale", pa.float64()),
    pa.field("structure_image", pa.string()),  # resolved URI; null: no ControlNet
    pa.field("structure_scale", pa.float64()),
    pa.field("format", pa.string()),
    pa.field("path", pa.string()),  # planned output path, relative to the output folder
    pa.field("truncated", pa.bool_()),  # prompt longer than a text encoder's window
    pa.field("truncated_by", pa.string()),  # which: "<component>:<clip|t5>", comma-separated
    pa.field("judge_key", pa.string()),  # the rules that judge it: filter settings, keep, CLIP threshold, decision
    pa.field("parent", pa.string()),  # the item id this child was made from (a refinement, a channel format)
    pa.field("variant", pa.string()),  # a channel format's name ("9:16", "300x250"); null for any other candidate
    pa.field("placement", pa.string()),  # where a channel format's source sits on its canvas
    # A brand overlay drawn after judgement, before signing (null where the style has none)
    pa.field("logo", pa.string()),  # resolved URI
    pa.field("logo_position", pa.string()),
    pa.field("logo_size", pa.float64()),
    pa.field("headline", pa.string()),  # the row's headline text (from [overlay].headline_column)
    pa.field("headline_font", pa.string()),  # resolved URI
    pa.field("headline_color", pa.string()),
    pa.field("headline_position", pa.string()),
    # the soft binding's algorithm of the invisible watermark embedded before signing (null: none);
    # its payload is the item id's first bits (provenance/watermark.py)
    pa.field("watermark", pa.string()),
    # A reviewer's decision on this candidate in force (applied with `run --decisions`), its note
    # and when it was made: part of the plan, so a new decision re-judges the row.
    pa.field("decision", pa.string()),  # approve | reject | refine, or null
    pa.field("note", pa.string()),
    pa.field("decided_at", pa.timestamp("ms", tz="UTC")),
]
PLAN_SCHEMA = pa.schema(PLAN_FIELDS)

# ── results: the plan plus what happened ────────────────────────────────────
OUTCOME_FIELDS = [
    pa.field("run_id", pa.string()),
    pa.field("job", pa.string()),
    pa.field("clip_score", pa.float64()),
    pa.field("clip_model", pa.string()),
    pa.field("prompt_unsafe_score", pa.float64()),
    pa.field("image_unsafe_score", pa.float64()),
    pa.field("moderation", pa.string()),  # PASS | BLOCK
    pa.field("moderation_model", pa.string()),  # the image moderation model that ran
    pa.field("reference_similarity", pa.float64()),  # CLIP cosine with the style's reference image
    pa.field("style_image_similarity", pa.float64()),  # CLIP cosine with the style's style image
    pa.field("status", pa.string()),
    pa.field("reason", pa.string()),  # what results show: the bare code, or "<code>: <detail>"
    pa.field("reason_code", pa.string()),  # the reason's code alone (REJECT_REASONS, ERROR_STAGES): what code reads
    pa.field("selected", pa.bool_()),
    pa.field("rank", pa.int64()),  # 1 = best passing candidate of the row
    pa.field("sha256", pa.string()),
    pa.field("bytes", pa.int64()),
    pa.field("c2pa_label", pa.string()),
    pa.field("c2pa_state", pa.string()),
    pa.field("clean_path", pa.string()),  # the image as generated, where a brand overlay was drawn on `path`
    pa.field("clean_sha256", pa.string()),
    # a small unsigned preview for review (`[output].previews`): not an asset, never checked, disposable
    pa.field("preview_path", pa.string()),
    pa.field("ms_generate", pa.float64()),
    pa.field("ms_score", pa.float64()),
    pa.field("ms_moderate", pa.float64()),
    pa.field("ms_encode", pa.float64()),
    pa.field("ms_sign", pa.float64()),
    pa.field("ms_write", pa.float64()),
    pa.field("ms_verify", pa.float64()),
    pa.field("worker", pa.string()),  # host:pid of the generating actor
    pa.field("writer", pa.string()),  # host:pid of the actor that encoded, signed and wrote
    pa.field("batch_size", pa.int64()),
    pa.field("batch_position", pa.int64()),
    pa.field("attempt", pa.int64()),
    pa.field("finished_at", pa.timestamp("ms", tz="UTC")),
    pa.field("judged_with", pa.string()),  # the judge_key in force when it was last judged
]
# Derived at compaction from the outcome (never in shards, so older shards need nothing):
# the model-actor seconds of a candidate that ran there, and their price under [cost].
DERIVED_FIELDS = [
    pa.field("gpu_s", pa.float64()),  # (ms_generate + ms_score + ms_moderate) / 1000
    pa.field("cost_usd", pa.float64()),  # gpu_s * [cost].gpu_hour_usd / 3600; null without a price
]
RESULTS_SCHEMA = pa.schema(PLAN_FIELDS + OUTCOME_FIELDS + DERIVED_FIELDS)  # + passthrough columns
# A measured candidate's normalised CLIP image embedding: committed beside its shard in
# `_embeddings/` (item_id, style, embedding), not in the results table (about 3 kB each).
EMBEDDING_FIELD = pa.field("clip_embedding", pa.list_(pa.float32()))

# Columns of the manifest the pipeline consumes; every other column passes through.
CONSUMED_MANIFEST_COLUMNS = set(MANIFEST_COLUMNS)
RESERVED_NAMES = {f.name for f in PLAN_FIELDS + OUTCOME_FIELDS + DERIVED_FIELDS}
