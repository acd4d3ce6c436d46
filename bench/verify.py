"""What `verify` costs per image, and what threads buy.

Builds a synthetic output of M signed images (tests/helpers.signed_output: the pipeline's own
encode, the output's demo signer and `Output.put`; with `--watermark`, each image watermarked
and its soft binding signed, as `[watermark].enabled` writes them), then times `verify_output`
over all of it at each worker count: ms per image, images/s, peak RSS of the verify. Each figure
is the best of `--repeat` runs (shared VMs drift). The outputs are kept under out/bench/ and
reused when they are there.

    python -m bench.verify [--images 400] [--size 512] [--workers 1,2,4] [--repeat 2] [--json out.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, emit, machine, peak_rss_mb, reset_peak_rss, rss_mb, table  # noqa: E402


def build(images: int, size: int, watermark: bool) -> tuple[Path, float]:
    """The synthetic output (made once) and the seconds it took to make (0 when reused)."""
    from tests.helpers import signed_output

    folder = ROOT / "out" / "bench" / f"verify-{images}x{size}{'-wm' if watermark else ''}"
    if (folder / "results.parquet").exists():
        return folder, 0.0
    started = time.perf_counter()
    signed_output(folder, images, size=size, watermark=watermark)
    return folder, time.perf_counter() - started


def time_verify(folder: Path, workers: int, repeat: int) -> dict:
    from pipeline.review.verify import verify_output

    best = None
    for _ in range(repeat):
        reset_peak_rss()
        before = rss_mb()
        started = time.perf_counter()
        problems, checked = verify_output(folder, workers=workers)
        seconds = time.perf_counter() - started
        if problems:
            raise SystemExit(f"verify found problems in the synthetic output: {problems[:3]}")
        if best is None or seconds < best["s"]:
            best = {"s": round(seconds, 3), "images": checked, "peak_rss_mb": round(peak_rss_mb(), 1),
                    "rss_growth_mb": round(peak_rss_mb() - before, 1)}
    best["ms_per_image"] = round(best["s"] / best["images"] * 1000, 3)
    best["images_per_s"] = round(best["images"] / best["s"], 1)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--images", type=int, default=400)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--workers", default="1,2,4", help="comma-separated worker counts")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--watermark", choices=("off", "on", "both"), default="both")
    ap.add_argument("--json")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",")]
    cases = {"off": [False], "on": [True], "both": [False, True]}[args.watermark]
    result: dict = {"bench": "verify", "machine": machine(), "images": args.images, "size": args.size,
                    "repeat": args.repeat, "runs": []}
    rows: list[tuple[str, object]] = []
    for watermark in cases:
        folder, made = build(args.images, args.size, watermark)
        kind = "watermarked" if watermark else "signed"
        verify_output_import_warm(folder)
        for workers in counts:
            run = {"watermark": watermark, "workers": workers, "build_s": round(made, 1),
                   **time_verify(folder, workers, args.repeat)}
            result["runs"].append(run)
            rows.append((f"{kind}, {workers} worker(s): ms/image", run["ms_per_image"]))
            rows.append((f"{kind}, {workers} worker(s): images/s", run["images_per_s"]))
            rows.append((f"{kind}, {workers} worker(s): peak RSS MB (growth)", f"{run['peak_rss_mb']} "
                         f"(+{run['rss_growth_mb']})"))
    print(table(rows, f"verify: {args.images} images of {args.size}x{args.size} PNG, best of {args.repeat}"))
    emit(result, "verify", args.json)


def verify_output_import_warm(folder: Path) -> None:
    """One image checked first, so imports and c2pa's start-up are not counted in the first run."""
    from pipeline.review.verify import verify_output

    verify_output(folder, workers=1, sample=1)


if __name__ == "__main__":
    main()
