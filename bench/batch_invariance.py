"""Batch invariance: is a row's image the same generated alone as generated in a batch?

    .venv/bin/python bench/batch_invariance.py                                   # tiny SD, CPU
    .venv/bin/python bench/batch_invariance.py --model /tmp/models/sd15-random --width 512 --height 512 \
        --steps 25 --guidance 7.5 --batch-size 16 --device cuda --dtype bfloat16

The pipeline batches candidates of equal settings, and each candidate's seed feeds its own
generator, so an image should not depend on its batch mates. In exact arithmetic it does not; on
a GPU the kernels (matrix products, attention, convolutions) that a batch of N gets can differ
from a batch of 1's, and in bf16 their different summation orders round differently. This
generates one batch of `--batch-size` rows through the pipeline's own `Generator`, then the
first and the last row alone, then the first row alone again (run-to-run determinism, which
separates non-determinism from batch variance), and reports the largest pixel difference over
255, the mean, and the share of pixels that differ. `degenerate` flags images with (almost) no
variation (a random-weight model that gave flat or NaN images makes any difference meaningless).
Prints a table, then one JSON object as the last line (also written to `--json`).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PROMPTS, add_generation_args, emit, machine, table  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    add_generation_args(ap)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--json", help="where to write the JSON (default: out/bench/…)")
    return ap.parse_args()


def candidate(i: int, args) -> dict:
    """A plan row as the pipeline's Generator reads it (text-to-image, no LoRA, no negative)."""
    from pipeline.spec.schema import PLAN_FIELDS

    return {f.name: None for f in PLAN_FIELDS} | {
        "id": f"inv-{i:03d}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": 5000 + i, "mode": "t2i",
        "width": args.width, "height": args.height, "steps": args.steps, "guidance_scale": args.guidance}


def compare(a, b) -> dict:
    import numpy as np

    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return {"max_abs_diff": int(d.max()), "max_abs_diff_over_255": float(d.max()) / 255,
            "mean_abs_diff_over_255": float(d.mean()) / 255, "share_of_values_differing": float((d > 0).mean())}


def main() -> None:
    import numpy as np
    import torch

    from pipeline.models.diffusion import load_diffusion
    from pipeline.models.loading import quiet_libraries, resolve_device, resolve_dtype
    from pipeline.stages.generate import Generator

    args = parse()
    quiet_libraries()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    t0 = time.perf_counter()
    pipes = load_diffusion(args.model, revision=None, scheduler=None, device=device, dtype=dtype)
    load_s = time.perf_counter() - t0
    cands = [candidate(i, args) for i in range(args.batch_size)]

    def run(rows: list[dict]) -> tuple[list, float]:
        t = time.perf_counter()
        out = Generator(pipes, batch_size=len(rows))(rows)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        bad = [g.error for g in out if g.error]
        if bad:
            raise RuntimeError(bad[0])
        return [g.image for g in out], time.perf_counter() - t

    batch, batch_s = run(cands)
    last = len(cands) - 1
    first_alone, alone_s = run([cands[0]])
    last_alone, _ = run([cands[last]])
    first_again, _ = run([cands[0]])
    rows = {"first": compare(batch[0], first_alone[0]), "last": compare(batch[last], last_alone[0])}
    repeat = compare(first_alone[0], first_again[0])
    stds = [float(np.asarray(im, dtype=np.float32).std()) for im in batch]
    m = machine()
    result = {
        "bench": "batch_invariance", "model": args.model, "width": args.width, "height": args.height,
        "steps": args.steps, "guidance_scale": args.guidance, "batch_size": args.batch_size,
        "device": device, "dtype": str(dtype).removeprefix("torch."),
        "rows": rows, "repeat_alone": repeat,
        "max_abs_diff_over_255": max(r["max_abs_diff_over_255"] for r in rows.values()),
        "batch_invariant": all(r["max_abs_diff"] == 0 for r in rows.values()),
        "deterministic_alone": repeat["max_abs_diff"] == 0,
        "image_std_min": min(stds), "degenerate": min(stds) < 1.0,
        "load_s": load_s, "batch_s": batch_s, "alone_s": alone_s, "machine": m,
    }
    print(table([("device / dtype", f"{device} / {result['dtype']} ({m['gpu'] or m['cpu']})"),
                 (f"first row: batch of {args.batch_size} vs alone, max |diff|/255",
                  rows["first"]["max_abs_diff_over_255"]),
                 ("first row: mean |diff|/255", rows["first"]["mean_abs_diff_over_255"]),
                 ("first row: share of values differing", rows["first"]["share_of_values_differing"]),
                 ("last row: batch vs alone, max |diff|/255", rows["last"]["max_abs_diff_over_255"]),
                 ("first row alone twice, max |diff|/255", repeat["max_abs_diff_over_255"]),
                 ("smallest image std (0–255)", result["image_std_min"]),
                 ("batch s / one alone s", f"{batch_s:.2f} / {alone_s:.2f}")],
                f"batch invariance: {args.model} {args.width}x{args.height}, {args.steps} steps"))
    emit(result, "batch_invariance", args.json)


if __name__ == "__main__":
    main()
