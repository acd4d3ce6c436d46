"""A job of many styles against a job of one, the same size: what switching LoRAs (and, with
`--style-images`, IP-Adapter style images) costs the pipeline.

    .venv/bin/python -m bench.style_switching            # 10 styles vs 1 on the embedded tiny SD, CPU

Both jobs have the same rows, candidates and settings; in the many-style job every style has its
own LoRA (and style image), in the one-style job every row shares one. Units come a style at a
time (plan/work.py), so an actor switches each at most once per unit. Throughput is steady state
(candidates finished after the first unit, per second); the jobs alternate for `--rounds`, and
the ratio (many / one) is the median of the rounds'. Prints a table and one JSON line.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PROMPTS, emit, job_toml, machine, table  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--styles", type=int, default=10)
    ap.add_argument("--rows", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--style-images", action="store_true", help="each style also has its own IP-Adapter image")
    ap.add_argument("--backend", default="ray", choices=["ray", "in-process"])
    ap.add_argument("--json")
    return ap.parse_args()


def write_job(folder: Path, args, styles: int) -> Path:
    import polars as pl
    from PIL import Image

    from tests.helpers import make_lora

    folder.mkdir(parents=True, exist_ok=True)
    names = [f"s{i}" for i in range(styles)]
    loras = [str(make_lora(folder / f"lora{i}", seed=i)) for i in range(styles)]
    table_ = {"style": names, "lora": loras}
    if args.style_images:
        for i in range(styles):
            Image.new("RGB", (64, 64), ((37 * i) % 256, (91 * i) % 256, 128)).save(folder / f"look{i}.png")
        table_["style_image"] = [str(folder / f"look{i}.png") for i in range(styles)]
    pl.DataFrame(table_).write_parquet(folder / "styles.parquet")
    pl.DataFrame({"id": [f"r{i}" for i in range(args.rows)],
                  "prompt": [PROMPTS[i % len(PROMPTS)] for i in range(args.rows)],
                  "style": [names[i % styles] for i in range(args.rows)]}).write_parquet(folder / "manifest.parquet")
    (folder / "job.toml").write_text(job_toml({
        "job": {"name": f"styles-{styles}", "manifest": "manifest.parquet", "styles": "styles.parquet",
                "output": "out"},
        "models": {"ip_adapter": "embedded:tiny-ip-adapter"} if args.style_images else {},
        "generate": {"steps": args.steps, "width": args.size, "height": args.size, "batch_size": args.batch_size},
        "filter": {"image_unsafe_threshold": 1.0}}))
    return folder / "job.toml"


def run(job: Path, args) -> float:
    """Steady candidates per second of one fresh run of `job`."""
    import shutil

    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job

    shutil.rmtree(job.parent / "out", ignore_errors=True)
    report = run_job(load_job(job), backend=args.backend)
    assert report.exit_code == 0, report.summary
    done = sorted(r["finished_at"].timestamp() for r in pq.read_table(report.results).to_pylist()
                  if r["finished_at"])
    b = min(args.batch_size, len(done) - 1)
    return (len(done) - b) / (done[-1] - done[b - 1])


def main() -> None:
    args = parse()
    with tempfile.TemporaryDirectory() as tmp:
        many, one = write_job(Path(tmp) / "many", args, args.styles), write_job(Path(tmp) / "one", args, 1)
        rates: dict[str, list[float]] = {"many": [], "one": []}
        t0 = time.time()
        for _ in range(args.rounds):
            rates["one"].append(run(one, args))
            rates["many"].append(run(many, args))
    ratios = [m / o for m, o in zip(rates["many"], rates["one"], strict=True)]
    result = {"machine": machine(), "styles": args.styles, "rows": args.rows, "steps": args.steps,
              "size": args.size, "style_images": args.style_images, "backend": args.backend,
              "candidates_per_s": {k: [round(v, 3) for v in vs] for k, vs in rates.items()},
              "ratios": [round(r, 3) for r in ratios], "ratio": round(statistics.median(ratios), 3),
              "wall_s": round(time.time() - t0, 1)}
    print(table([(f"{args.styles} styles", f"{statistics.median(rates['many']):.3f} cand/s"),
                 ("1 style", f"{statistics.median(rates['one']):.3f} cand/s"),
                 ("ratio (median of rounds)", f"{result['ratio']}")], "style switching"))
    emit(result, "style_switching", args.json)


if __name__ == "__main__":
    main()
