"""What a job costs before it runs: GPU-seconds, wall time and money per style, mode and model
(each model priced at its own throughput).

Seconds per image come from `[[cost.throughput]]` (model, shape, steps: a benchmark's measured
figure) or, for a shape it does not give, from earlier runs in the same output (the mean
model-actor time per candidate in `results.parquet`). Either scales linearly with the step count
(per-step seconds × the plan's steps). A shape neither knows is "unknown", never guessed.
"""

from __future__ import annotations

import polars as pl
import pyarrow as pa

from pipeline.spec.config import JobConfig

KEY = ("model", "width", "height")


def _configured(cfg: JobConfig) -> dict[tuple, float]:
    """Seconds per image per step, per (model, width, height), from [[cost.throughput]]."""
    return {(t.model, t.width, t.height): t.seconds_per_image / t.steps for t in cfg.cost.throughput}


def _measured(cfg: JobConfig) -> dict[tuple, float]:
    """Seconds per image per step, per (model, width, height), from the output's earlier results."""
    from pipeline.storage.layout import RESULTS
    from pipeline.storage.records import read_results
    from pipeline.storage.store import as_output

    out = as_output(cfg.job.output)
    if not out.exists(RESULTS):
        return {}
    table = read_results(out, [*KEY, "steps", "gpu_s"])  # these columns only, by ranges on object storage
    if "gpu_s" not in table.column_names:  # results of a release before costs
        return {}
    ran = pl.from_arrow(table).filter(pl.col("gpu_s").is_not_null())
    rates = ran.group_by(KEY).agg((pl.col("gpu_s") / pl.col("steps")).mean().alias("rate"))
    return {(r["model"], r["width"], r["height"]): r["rate"] for r in rates.iter_rows(named=True)}


SHAPE = ["style", "mode", *KEY, "steps"]


def shapes(plan: pa.Table) -> pl.DataFrame:
    """Candidates per (style, mode, model, size, steps) of a plan or a chunk of it, in order of
    first appearance: all an estimate needs, so a plan can be counted a chunk at a time."""
    return (pl.from_arrow(plan.select(SHAPE)).with_columns(pl.col("style").fill_null("-"))
            .group_by(SHAPE, maintain_order=True).len())


def estimate(plan: pa.Table | pl.DataFrame, cfg: JobConfig) -> list[dict]:
    """One line per (style, mode, model) in plan order of first appearance, then a total: candidates,
    gpu_s (None when a shape's throughput is unknown), wall_s on the cluster's GPUs, cost_usd.
    `plan`: the plan, or its `shapes` (those of its chunks, concatenated)."""
    rates = {**_measured(cfg), **_configured(cfg)}  # a configured figure wins over a measured one
    gpus = cfg.cost.gpu_count(cfg.cluster)
    price = cfg.cost.gpu_hour_usd
    counted = plan if isinstance(plan, pl.DataFrame) else shapes(plan)
    shapes_ = counted.group_by(SHAPE, maintain_order=True).agg(pl.col("len").sum())
    lines: dict[tuple, dict] = {}
    for r in shapes_.iter_rows(named=True):
        line = lines.setdefault((r["style"], r["mode"], r["model"]), {
            "style": r["style"], "mode": r["mode"], "model": r["model"], "candidates": 0, "gpu_s": 0.0})
        line["candidates"] += r["len"]
        rate = rates.get((r["model"], r["width"], r["height"]))
        line["gpu_s"] = None if rate is None or line["gpu_s"] is None else line["gpu_s"] + rate * r["steps"] * r["len"]
    total = {"style": "total", "mode": "", "model": "", "candidates": sum(v["candidates"] for v in lines.values()),
             "gpu_s": None if any(v["gpu_s"] is None for v in lines.values())
             else sum(v["gpu_s"] for v in lines.values())}
    out = [*lines.values(), total]
    for line in out:
        g = line["gpu_s"]
        line["wall_s"] = None if g is None else g / gpus
        line["cost_usd"] = None if g is None or price is None else g * price / 3600
    return out


def format_estimate(lines: list[dict], cfg: JobConfig) -> str:
    gpus, price = cfg.cost.gpu_count(cfg.cluster), cfg.cost.gpu_hour_usd
    head = (f"estimate on {gpus:g} GPU(s)" + (f" at ${price:g}/GPU-hour" if price is not None else
                                               " (no [cost].gpu_hour_usd: no cost)"))
    rows = [("style", "mode", "model", "candidates", "gpu_s", "wall", "cost_usd")]
    for line in lines:
        g = line["gpu_s"]
        rows.append((line["style"], line["mode"], line["model"], str(line["candidates"]),
                     "unknown" if g is None else f"{g:.1f}",
                     "unknown" if g is None else _duration(line["wall_s"]),
                     "unknown" if g is None else "-" if line["cost_usd"] is None else f"{line['cost_usd']:.4f}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join([head, *("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows)])


def _duration(seconds: float) -> str:
    h, rest = divmod(round(seconds), 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s" if m else f"{seconds:.1f}s"
