"""The pipeline against the bare model, side by side, in one process.

    .venv/bin/python bench/pipeline_vs_bare.py --quick
    .venv/bin/python bench/pipeline_vs_bare.py --model /models/sd15-random --width 512 --height 512 \
        --steps 25 --batch-size 16 --images 512 --device cuda --dtype bfloat16

(a) bare: a plain diffusers loop over the candidates (same model, settings, batch size and
per-candidate CPU generators; no scoring, no signing; images kept in memory).
(b) pipeline: the full job through Ray (generate → CLIP → moderation → select → encode → C2PA
sign → write → verify → results shards).
Throughput is steady state: the first batch (warm-up, actor start, model load) is excluded
from both. The bare loop runs before and after each pipeline run (`--rounds`); a round's ratio
is the pipeline's rate over the mean of the bare runs either side of it, and the reported ratio
is the median over rounds (`ratios` lists them all). Prints a table, then one JSON object as
the last line (also written to a file).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import PROMPTS, add_generation_args, emit, machine, peak_rss_mb, table  # noqa: E402


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true",
                    help="3 rounds of 40 images: a run for 2 CPU cores (about 6 minutes)")
    ap.add_argument("--rounds", type=int, default=1,
                    help="pipeline runs, each between two bare runs; the ratio is their median")
    add_generation_args(ap)
    ap.add_argument("--images", type=int, default=96, help="candidates to generate (one per row)")
    ap.add_argument("--moderation", default="embedded:tiny-nsfw",
                    help="image moderation model; embedded:tiny-clip-head shares the CLIP embedding")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--format", default="png", choices=["png", "jpeg", "webp"])
    ap.add_argument("--png-level", type=int, default=1)
    for flag in ("channels-last", "compile", "vae-slicing", "vae-tiling"):
        ap.add_argument(f"--{flag}", action="store_true", help=f"[models].{flag.replace('-', '_')} on both sides")
    ap.add_argument("--backend", default="ray", choices=["ray", "in-process"],
                    help="in-process: the same stages without Ray, one after the other (isolates Ray's cost)")
    ap.add_argument("--write-actors", type=int, default=0,
                    help="[cluster].write_actors: 0 = auto (none on a CPU node: the generate actor writes)")
    ap.add_argument("--thumbnail", action="store_true", help="embed C2PA thumbnails (off in batch runs)")
    ap.add_argument("--peak-tflops", type=float, default=None,
                    help="the device's peak for the dtype (default: 989 on an H100 or H200 with 16-bit dtypes)")
    ap.add_argument("--json", help="where to write the JSON (default: out/bench/…); with it, a partial "
                    "JSON is written there after each phase, so a run cut off by a time limit leaves its figures")
    args = ap.parse_args()
    if args.quick:
        # On a shared 2-core VM one 20-second sample moved the ratio by ±0.1: more rounds, each
        # long enough to average over the VM's bursts, still inside 10 minutes.
        args.images, args.rounds = min(args.images, 40), max(args.rounds, 3)
    return args


def candidates(n: int, seed0: int = 1000) -> list[dict]:
    return [{"id": f"bench-{i:05d}", "prompt": PROMPTS[i % len(PROMPTS)], "seed": seed0 + i} for i in range(n)]


class GpuSampler:
    """nvidia-smi utilisation every 0.5 s while running (absent on CPU machines)."""

    def __init__(self):
        self.samples: list[float] = []
        self._stop = threading.Event()
        self.available = shutil.which("nvidia-smi") is not None

    def __enter__(self):  # re-entered once per round: samples accumulate
        self._stop = threading.Event()
        if self.available:
            threading.Thread(target=self._run, daemon=True).start()
        return self

    def _run(self):
        while not self._stop.wait(0.5):
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.samples.append(float(out.stdout.split()[0]))

    def __exit__(self, *exc):
        self._stop.set()

    @property
    def mean(self) -> float | None:
        return statistics.mean(self.samples) if self.samples else None


def load(args):
    from pipeline.models.diffusion import load_diffusion, optimize
    from pipeline.models.loading import quiet_libraries, resolve_device, resolve_dtype

    quiet_libraries()
    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    pipes = load_diffusion(args.model, revision=None, scheduler=None, device=device, dtype=dtype)
    optimize(pipes, **optimizations(args))
    return pipes, device


def optimizations(args) -> dict:
    return {k: getattr(args, k) for k in ("channels_last", "compile", "vae_slicing", "vae_tiling")}


def flops_per_image(pipes, args, device) -> float | None:
    """UNet passes (×2 with guidance) × steps + one VAE decode, counted by torch."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    pipe = pipes.t2i
    if not hasattr(pipe, "unet"):
        return None
    f = pipes.vae_scale_factor
    lat = torch.zeros(1, pipe.unet.config.in_channels, args.height // f, args.width // f, device=device,
                      dtype=pipe.unet.dtype)
    text = torch.zeros(1, 77, pipe.unet.config.cross_attention_dim, device=device, dtype=pipe.unet.dtype)
    extra = {}
    if pipe.unet.config.get("addition_embed_type") == "text_time":  # SDXL
        cfg = pipe.unet.config  # the pooled text projection: what the time embedding's input has beyond 6 ids
        pooled = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim  # 1280 in SDXL
        extra["added_cond_kwargs"] = {"text_embeds": torch.zeros(1, pooled, device=device, dtype=pipe.unet.dtype),
                                      "time_ids": torch.zeros(1, 6, device=device, dtype=pipe.unet.dtype)}
    with torch.inference_mode():
        with FlopCounterMode(display=False) as unet_count:
            pipe.unet(lat, torch.tensor([10], device=device), encoder_hidden_states=text, **extra)
        with FlopCounterMode(display=False) as vae_count:
            pipe.vae.decode(lat.to(pipe.vae.dtype))
    passes = 2 if args.guidance > 1 else 1
    return unet_count.get_total_flops() * passes * args.steps + vae_count.get_total_flops()


def bare(args, pipes) -> dict:
    """The yardstick: the model alone over the same candidates, same batch size."""
    import numpy as np
    import torch

    cands = candidates(args.images)
    batches = [cands[i:i + args.batch_size] for i in range(0, len(cands), args.batch_size)]
    times = []
    for batch in batches:
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = pipes.t2i(prompt=[c["prompt"] for c in batch], num_inference_steps=args.steps,
                            guidance_scale=args.guidance, width=args.width, height=args.height,
                            generator=[torch.Generator("cpu").manual_seed(c["seed"]) for c in batch],
                            output_type="np").images
        [np.clip(np.rint(np.asarray(im) * 255), 0, 255).astype(np.uint8) for im in out]
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    steady = sum(len(b) for b in batches[1:]) / sum(times[1:]) if len(batches) > 1 else len(cands) / times[0]
    return {"images_per_s": steady, "first_batch_s": times[0], "total_s": sum(times)}


def pipeline(args, folder: Path) -> dict:
    import polars as pl
    import pyarrow.parquet as pq

    from pipeline.run.job import run_job
    from pipeline.spec.load import load_job

    pl.DataFrame(candidates(args.images)).write_parquet(folder / "manifest.parquet")
    (folder / "job.toml").write_text(f"""
[job]
name = "bench"
manifest = "manifest.parquet"
output = "out"
max_failed_fraction = 0.0
[models]
diffusion = "{args.model}"
moderation = "{args.moderation}"
device = "{args.device}"
dtype = "{args.dtype}"
{chr(10).join(f"{k} = {str(v).lower()}" for k, v in optimizations(args).items())}
[generate]
steps = {args.steps}
guidance_scale = {args.guidance}
width = {args.width}
height = {args.height}
batch_size = {args.batch_size}
[filter]
image_unsafe_threshold = 1.0
[output]
format = "{args.format}"
png_compress_level = {args.png_level}
shard_rows = {max(64, args.batch_size * 4)}
[signer]
thumbnail = {str(args.thumbnail).lower()}
[cluster]
write_actors = {args.write_actors}
""")
    cfg = load_job(folder / "job.toml")
    t0 = time.time()
    report = run_job(cfg, backend=args.backend)
    wall = time.time() - t0
    res = pq.read_table(report.results).to_pylist()
    done = sorted(r["finished_at"].timestamp() for r in res if r["finished_at"])
    b = min(args.batch_size, len(done) - 1)
    steady = (len(done) - b) / (done[-1] - done[b - 1]) if len(done) > b else float("nan")
    written_total = sum(r["status"] == "written" for r in res)
    # Stage timings in the steady state too: the first unit's include warm-up.
    first_done = done[b - 1] if len(done) > b else float("inf")
    res = [r for r in res if r["finished_at"] and r["finished_at"].timestamp() > first_done] or res
    written = [r for r in res if r["status"] == "written"]

    def mean(col):
        vals = [r[col] for r in res if r[col] is not None]
        return statistics.mean(vals) if vals else None

    stages = {s: mean(f"ms_{s}") for s in ("generate", "score", "moderate", "encode", "sign", "write", "verify")}
    cpu_ms = [sum(r[f"ms_{s}"] or 0 for s in ("encode", "sign", "write", "verify")) for r in written]
    return {"images_per_s": steady, "startup_s": done[0] - t0 if done else None, "wall_s": wall,
            "written": written_total, "stage_ms": stages,
            "cpu_s_per_image": statistics.mean(cpu_ms) / 1000 if cpu_ms else None,
            "exit_code": report.exit_code}


def bare_rate(args) -> float:
    """The bare loop with freshly loaded models: none are held while the pipeline runs."""
    pipes, _ = load(args)
    rate = bare(args, pipes)["images_per_s"]
    del pipes
    return rate


PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0}  # dense, by the datasheets (same Hopper chip)


def default_peak(args, m: dict) -> float | None:
    if args.peak_tflops:
        return args.peak_tflops
    if m["gpu"] and args.dtype != "float32":
        return next((v for k, v in PEAK_BF16_TFLOPS.items() if k in m["gpu"]), None)
    return None


def summarise(args, device: str, flops: float | None, bares: list[float], rounds: list[dict],
              g_bare: GpuSampler, g_pipe: GpuSampler, m: dict, partial: str | None = None) -> dict:
    """The JSON object, from whatever has been measured so far. `partial` names the phase a cut-off
    run got to (the object is then written after each phase, so a killed run leaves its figures)."""
    p = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2] if rounds else {}  # the median round
    peak = default_peak(args, m)
    bare_rate = statistics.median(bares) if bares else None
    pipe_rate = p.get("images_per_s")
    result = {
        "bench": "pipeline_vs_bare", "model": args.model, "moderation": args.moderation,
        "width": args.width, "height": args.height,
        "steps": args.steps, "guidance_scale": args.guidance, "batch_size": args.batch_size, "images": args.images,
        "format": args.format, "png_level": args.png_level, "thumbnail": args.thumbnail, "backend": args.backend,
        "write_actors": args.write_actors,
        **optimizations(args),
        "device": device, "dtype": args.dtype,
        "rounds": args.rounds, "bare_images_per_s": bare_rate, "bare_runs": bares,
        "bare_spread": max(bares) / min(bares) - 1 if bares else None,
        "pipeline_images_per_s": pipe_rate, "pipeline_runs": [r["images_per_s"] for r in rounds],
        "ratio": p.get("ratio"), "ratios": [r["ratio"] for r in rounds],
        "target_ratio": 0.95 if device.startswith("cuda") else 0.85,
        "startup_s": p.get("startup_s"),
        "cpu_s_per_image": p.get("cpu_s_per_image"), "stage_ms": p.get("stage_ms"), "peak_rss_mb": peak_rss_mb(),
        "gpu_util_bare": g_bare.mean, "gpu_util_pipeline": g_pipe.mean,
        "tflop_per_image": flops / 1e12 if flops else None,
        "achieved_tflops_bare": flops * bare_rate / 1e12 if flops and bare_rate else None,
        "achieved_tflops_pipeline": flops * pipe_rate / 1e12 if flops and pipe_rate else None,
        "peak_tflops": peak,
        "physical_limit_images_per_s": peak * 1e12 / flops if peak and flops else None,
        "written": p.get("written"), "exit_code": p.get("exit_code"), "machine": m,
    }
    limit = result["physical_limit_images_per_s"]
    result["bare_fraction_of_limit"] = bare_rate / limit if limit and bare_rate else None
    result["pipeline_fraction_of_limit"] = pipe_rate / limit if limit and pipe_rate else None
    result["meets_target"] = result["ratio"] >= result["target_ratio"] if result["ratio"] is not None else None
    if partial:
        result["partial"] = partial
    return result


def main() -> None:
    args = parse()
    m = machine()
    pipes, device = load(args)
    flops = flops_per_image(pipes, args, device)
    # Rounds: bare, pipeline, bare, pipeline, …, bare. A shared VM's speed drifts by ±15% within
    # a minute, so each pipeline run is compared with the mean of the bare runs on either side
    # of it, and the figure is the median of those paired ratios.
    rounds: list[dict] = []
    g_bare, g_pipe = GpuSampler(), GpuSampler()

    def checkpoint(phase: str) -> None:  # a run cut off by a time limit still leaves its figures
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            Path(args.json).write_text(json.dumps(summarise(args, device, flops, bares, rounds, g_bare, g_pipe, m,
                                                            partial=phase), indent=2) + "\n")

    bares: list[float] = []
    checkpoint("loaded")
    with g_bare:
        bares.append(bare(args, pipes)["images_per_s"])
    del pipes
    print(f"bare {bares[-1]:.3f} img/s", file=sys.stderr, flush=True)
    checkpoint("bare")
    for i in range(args.rounds):
        folder = Path(tempfile.mkdtemp(prefix="bench-"))
        with g_pipe:
            p = pipeline(args, folder)
        shutil.rmtree(folder, ignore_errors=True)
        if args.backend == "ray":
            import ray

            ray.shutdown()  # the bare loop runs on a machine without Ray's daemons
        p["ratio"] = p["images_per_s"] / bares[-1]  # provisional: until the bare run after it
        rounds.append(p)
        print(f"round {i + 1}/{args.rounds}: pipeline {p['images_per_s']:.3f} img/s", file=sys.stderr, flush=True)
        checkpoint(f"round {i + 1} pipeline (ratio against the bare run before it only)")
        with g_bare:
            bares.append(bare_rate(args))
        p["ratio"] = p["images_per_s"] / ((bares[-2] + bares[-1]) / 2)
        print(f"round {i + 1}/{args.rounds}: bare {bares[-2]:.3f} → {bares[-1]:.3f} img/s, "
              f"pipeline {p['images_per_s']:.3f} img/s, ratio {p['ratio']:.3f}", file=sys.stderr, flush=True)
        if i + 1 < args.rounds:
            checkpoint(f"round {i + 1}")
    result = summarise(args, device, flops, bares, rounds, g_bare, g_pipe, m)
    p = sorted(rounds, key=lambda r: r["ratio"])[len(rounds) // 2]
    rows = [("device", f"{device} ({m['gpu'] or m['cpu']}, {m['cores']} cores)"),
            ("bare images/s (median of runs)", result["bare_images_per_s"]),
            ("bare spread, fastest vs slowest run", result["bare_spread"]),
            ("pipeline images/s (median round)", p["images_per_s"]),
            ("ratio pipeline/bare (median of paired rounds)", result["ratio"]),
            ("ratios of the rounds", " ".join(f"{r['ratio']:.3f}" for r in rounds)),
            ("target / met", f"{result['target_ratio']} / {'yes' if result['meets_target'] else 'NO'}"),
            ("pipeline start-up s", p["startup_s"] or 0.0),
            ("CPU s/image (encode+sign+write+verify)", p["cpu_s_per_image"] or 0.0),
            *[(f"stage ms: {k}", v) for k, v in p["stage_ms"].items() if v is not None],
            ("TFLOP/image", result["tflop_per_image"] or 0.0),
            ("achieved TFLOP/s bare / pipeline", f"{result['achieved_tflops_bare'] or 0:.1f} / "
                                                 f"{result['achieved_tflops_pipeline'] or 0:.1f}"),
            ("physical limit images/s (peak TFLOP/s)", f"{result['physical_limit_images_per_s'] or 0:.2f} "
                                                       f"({result['peak_tflops']})"),
            ("driver peak RSS MB", result["peak_rss_mb"])]
    print(table(rows, f"pipeline vs bare: {args.model} {args.width}x{args.height}, {args.steps} steps, "
                      f"batch {args.batch_size}, {args.images} images"))
    emit(result, "pipeline_vs_bare", args.json)


if __name__ == "__main__":
    main()
