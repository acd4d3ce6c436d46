"""The two Python halves of bench/gpu.sh: `probe` (what the machine has) and `summary` (every figure
that bench/RESULTS.md's GPU section owes, in one JSON).

    python bench/gpu_report.py probe ENV_JSON
    python bench/gpu_report.py summary OUT_DIR WORK_DIR
    python bench/gpu_report.py markdown SUMMARY_JSON      # rows for bench/RESULTS.md's GPU tables

`probe` never fails for a missing package: it records it (the summary says which step it broke).
`summary` reads whatever the steps left (their JSONs may be partial or absent) and always writes
OUT_DIR/summary.json.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import table  # noqa: E402

# import name → distribution name, for what the benches import (directly or through pipeline/)
PACKAGES = {"torch": "torch", "torchvision": "torchvision", "diffusers": "diffusers", "transformers": "transformers",
            "huggingface_hub": "huggingface_hub", "accelerate": "accelerate", "safetensors": "safetensors",
            "open_clip": "open_clip_torch", "timm": "timm", "ftfy": "ftfy", "c2pa": "c2pa-python",
            "cryptography": "cryptography", "polars": "polars", "pyarrow": "pyarrow", "PIL": "pillow",
            "numpy": "numpy", "peft": "peft", "fsspec": "fsspec", "rich": "rich", "ray": "ray"}
# Figures the section promises (bench/RESULTS.md): images/s at these settings on one H100/H200.
TARGETS = {"sd15": {"images_per_s": 14.0, "settings": "512 px, 25 steps, CFG 7.5"},
           "sdxl": {"images_per_s": 1.4, "settings": "1024 px, 30 steps, CFG 5"}}


def probe(path: str) -> None:
    from importlib import import_module, metadata

    info: dict = {"python": platform.python_version(), "executable": sys.executable,
                  "pythonpath": os.environ.get("PYTHONPATH", ""), "packages": {}, "missing": []}
    for mod, dist in PACKAGES.items():
        try:
            m = import_module(mod)
            try:
                version = metadata.version(dist)
            except metadata.PackageNotFoundError:
                version = getattr(m, "__version__", "?")
            info["packages"][mod] = {"version": version, "from": str(Path(m.__file__).parent.parent)}
        except Exception as e:  # noqa: BLE001 — an import that breaks is a finding, not a crash
            info["missing"].append(mod)
            info["packages"][mod] = {"error": f"{type(e).__name__}: {e}"[:300]}
    try:  # the project's own modules, as the benches import them: fails here, not 2 minutes in
        import pipeline.run.job  # noqa: F401
        import pipeline.stages.candidate  # noqa: F401

        info["pipeline_import"] = "ok"
    except Exception as e:  # noqa: BLE001
        info["pipeline_import"] = f"{type(e).__name__}: {e}"[:500]
    try:
        import torch

        info["cuda"] = torch.cuda.is_available()
        if info["cuda"]:
            props = torch.cuda.get_device_properties(0)
            info["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                           "memory_gib": props.total_memory / 2**30, "multiprocessors": props.multi_processor_count,
                           "cuda": torch.version.cuda}
            info["matmul_bf16_tflops"] = matmul_tflops()
    except Exception as e:  # noqa: BLE001
        info["cuda_error"] = f"{type(e).__name__}: {e}"[:300]
    Path(path).write_text(json.dumps(info, indent=2) + "\n")
    rows = [("python", f"{info['python']} ({sys.executable})"),
            *[(k, v.get("version") or v.get("error")) for k, v in info["packages"].items()],
            ("pipeline import", info["pipeline_import"]), ("cuda", info.get("cuda")),
            ("gpu", (info.get("gpu") or {}).get("name")),
            ("bf16 8192³ matmul TFLOP/s", info.get("matmul_bf16_tflops"))]
    print(table(rows, "machine"), flush=True)


def matmul_tflops(n: int = 8192, reps: int = 10) -> float:
    """The ceiling measured rather than read off a datasheet: a bf16 n³ product, mean of `reps`
    after three warm-ups (KINDS.md saw 769–798 on random data on this kind)."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(reps):
        a @ b
    end.record()
    torch.cuda.synchronize()
    seconds = start.elapsed_time(end) / 1000 / reps
    return 2 * n**3 / seconds / 1e12


def read_json(path: Path) -> dict | None:
    try:
        text = path.read_text().strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def model_figures(name: str, bench: dict | None, inv: dict | None, measured_peak: float | None, mode: str) -> dict:
    f: dict = {"bench": "absent (step failed or cut off before its first phase)" if bench is None else "ok"}
    if bench:
        keys = ("model", "width", "height", "steps", "guidance_scale", "batch_size", "images", "backend", "device",
                "dtype", "bare_images_per_s", "bare_runs", "pipeline_images_per_s", "ratio", "ratios",
                "target_ratio", "meets_target", "startup_s", "cpu_s_per_image", "stage_ms", "gpu_util_bare",
                "gpu_util_pipeline", "tflop_per_image", "achieved_tflops_bare", "achieved_tflops_pipeline",
                "peak_tflops", "physical_limit_images_per_s", "bare_fraction_of_limit",
                "pipeline_fraction_of_limit", "written", "exit_code")
        f.update({k: bench.get(k) for k in keys})
        if bench.get("partial"):
            f["bench"] = f"partial: cut off after phase '{bench['partial']}'"
        bare, pipe, cpu_s = bench.get("bare_images_per_s"), bench.get("pipeline_images_per_s"), bench.get(
            "cpu_s_per_image")
        if measured_peak and bench.get("tflop_per_image"):
            limit = measured_peak / bench["tflop_per_image"]
            f["measured_matmul_limit_images_per_s"] = limit
            f["bare_fraction_of_measured_limit"] = bare / limit if bare else None
            f["pipeline_fraction_of_measured_limit"] = pipe / limit if pipe else None
        if bench.get("backend") == "in-process" and bare and pipe and cpu_s is not None and 1 / pipe > cpu_s:
            # In-process the CPU stages (encode, sign, write, verify) run between batches; Ray's
            # writer actors overlap them with generation. An estimate, not a measurement.
            f["ratio_if_cpu_stages_overlapped_estimate"] = 1 / (1 / pipe - cpu_s) / bare
        if mode == "gpu" and name in TARGETS:
            t = TARGETS[name]
            f["target_images_per_s"] = t["images_per_s"]
            f["meets_images_per_s_target"] = pipe >= t["images_per_s"] if pipe else None
    f["batch_invariance"] = None if inv is None else {
        k: inv.get(k) for k in ("batch_size", "dtype", "max_abs_diff_over_255", "rows", "repeat_alone",
                                "batch_invariant", "deterministic_alone", "degenerate", "image_std_min")}
    return f


def summary(out_dir: str, work_dir: str) -> None:
    out, work = Path(out_dir), Path(work_dir)
    env = read_json(work / "env.json") or {}
    meta = read_json(work / "meta.json") or {}
    steps = []
    if (work / "steps.tsv").exists():
        for line in (work / "steps.tsv").read_text().splitlines():
            name, status, seconds, limit, rc = line.split("\t")
            steps.append({"step": name, "status": status, "seconds": int(seconds), "limit_s": int(limit),
                          "rc": int(rc)})
    peak = env.get("matmul_bf16_tflops")
    mode = meta.get("mode", "?")
    models = {m: model_figures(m, read_json(out / f"{m}.json"), read_json(out / f"invariance-{m}.json"), peak, mode)
              for m in ("sd15", "sdxl")}
    result = {
        "bench": "gpu", "mode": mode, "finished_utc": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime()),
        "wall_s": time.time() - meta["started"] if "started" in meta else None, "budget_s": meta.get("budget_s"),
        "commit": meta.get("commit"), "backend": meta.get("backend"), "backend_reason": meta.get("backend_reason"),
        "gpu": (env.get("gpu") or {}).get("name"), "gpu_info": env.get("gpu"),
        "matmul_bf16_tflops_measured": peak, "peak_tflops_datasheet": meta.get("peak_tflops"),
        "python": env.get("python"), "missing_packages": env.get("missing"),
        "packages": {k: v.get("version") or v.get("error") for k, v in (env.get("packages") or {}).items()},
        "pipeline_import": env.get("pipeline_import"),
        "steps": steps, "ok": bool(steps) and all(s["status"] == "ok" for s in steps), **models,
    }
    (out / "summary.json").write_text(json.dumps(result, indent=2) + "\n")

    def fmt(v, spec=".3g"):
        return "—" if v is None else (format(v, spec) if isinstance(v, float) else str(v))

    rows = [("mode / backend", f"{mode} / {result['backend']} ({result['backend_reason']})"),
            ("gpu", f"{result['gpu']}; matmul bf16 {fmt(peak, '.0f')} TFLOP/s measured, "
                    f"{fmt(meta.get('peak_tflops'))} datasheet"),
            ("steps", " ".join(f"{s['step']}={s['status']}({s['seconds']}s)" for s in steps))]
    for m, f in models.items():
        inv = f["batch_invariance"] or {}
        rows += [(f"{m}: bench", f["bench"]),
                 (f"{m}: bare / pipeline img/s", f"{fmt(f.get('bare_images_per_s'))} / "
                                                 f"{fmt(f.get('pipeline_images_per_s'))}"),
                 (f"{m}: ratio (target {fmt(f.get('target_ratio'))})", f"{fmt(f.get('ratio'))}"
                  + (f"; if the CPU stages overlapped ≈ {fmt(f['ratio_if_cpu_stages_overlapped_estimate'])}"
                     if "ratio_if_cpu_stages_overlapped_estimate" in f else "")),
                 (f"{m}: TFLOP/image, TFLOP/s bare / pipeline", f"{fmt(f.get('tflop_per_image'))}, "
                  f"{fmt(f.get('achieved_tflops_bare'))} / {fmt(f.get('achieved_tflops_pipeline'))}"),
                 (f"{m}: limit img/s (datasheet / measured matmul)",
                  f"{fmt(f.get('physical_limit_images_per_s'))} / {fmt(f.get('measured_matmul_limit_images_per_s'))}"),
                 (f"{m}: pipeline share of the limit", fmt(f.get("pipeline_fraction_of_limit"))),
                 (f"{m}: batch vs alone max |diff|/255", f"{fmt(inv.get('max_abs_diff_over_255'))} "
                  f"(repeat alone {fmt((inv.get('repeat_alone') or {}).get('max_abs_diff_over_255'))}, "
                  f"degenerate {inv.get('degenerate')})")]
    print(table(rows, f"bench/gpu.sh summary ({'all steps ok' if result['ok'] else 'NOT all steps ok'})"),
          flush=True)


def markdown(path: str) -> None:
    """The rows bench/RESULTS.md's GPU tables take, from a summary.json that came back."""
    s = json.loads(Path(path).read_text())

    def f(v, spec=".3g"):
        return "—" if v is None else format(v, spec) if isinstance(v, float) else str(v)

    when = (s.get("finished_utc") or "")[:10]
    print("| model | settings | backend | bare img/s | pipeline img/s | ratio (target 0.95) | TFLOP/image | "
          "TFLOP/s bare / pipeline | limit img/s at 989 / at measured matmul | pipeline share of limit | "
          "start-up s | CPU s/image |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for m in ("sd15", "sdxl"):
        x = s.get(m) or {}
        settings = (f"{x.get('width')} px, {x.get('steps')} steps, CFG {x.get('guidance_scale')}, "
                    f"batch {x.get('batch_size')}, {x.get('images')} images, {x.get('dtype')}")
        ratio = f(x.get("ratio"))
        if x.get("ratio_if_cpu_stages_overlapped_estimate"):
            ratio += f" (≈ {f(x['ratio_if_cpu_stages_overlapped_estimate'])} if overlapped, estimate)"
        if str(x.get("bench", "")).startswith("partial"):
            ratio += f" [{x['bench']}]"
        print(f"| {m} | {settings} | {x.get('backend')} | {f(x.get('bare_images_per_s'))} | "
              f"{f(x.get('pipeline_images_per_s'))} | {ratio} | {f(x.get('tflop_per_image'))} | "
              f"{f(x.get('achieved_tflops_bare'), '.0f')} / {f(x.get('achieved_tflops_pipeline'), '.0f')} | "
              f"{f(x.get('physical_limit_images_per_s'))} / {f(x.get('measured_matmul_limit_images_per_s'))} | "
              f"{f(x.get('pipeline_fraction_of_limit'), '.2f')} | {f(x.get('startup_s'), '.1f')} | "
              f"{f(x.get('cpu_s_per_image'), '.3f')} |")
    print()
    print("| model | dtype | batch | max pixel diff /255, row alone vs in batch (first, last) | "
          "alone twice | share of values differing | degenerate images |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for m in ("sd15", "sdxl"):
        inv = (s.get(m) or {}).get("batch_invariance") or {}
        rows = inv.get("rows") or {}
        print(f"| {m} | {inv.get('dtype')} | {inv.get('batch_size')} | "
              f"{f((rows.get('first') or {}).get('max_abs_diff_over_255'), '.4f')}, "
              f"{f((rows.get('last') or {}).get('max_abs_diff_over_255'), '.4f')} | "
              f"{f((inv.get('repeat_alone') or {}).get('max_abs_diff_over_255'), '.4f')} | "
              f"{f((rows.get('first') or {}).get('share_of_values_differing'), '.3f')} | {inv.get('degenerate')} |")
    matmul = f(s.get("matmul_bf16_tflops_measured"), ".0f")
    steps = ", ".join(f"{x['step']} {x['status']} {x['seconds']} s" for x in s.get("steps", []))
    print(f"\n{s.get('gpu')}, {when}, commit {s.get('commit')}, python {s.get('python')}, torch "
          f"{(s.get('packages') or {}).get('torch')}; bf16 matmul measured {matmul} TFLOP/s; steps: {steps}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "probe":
        probe(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "summary":
        summary(sys.argv[2], sys.argv[3])
    elif len(sys.argv) >= 3 and sys.argv[1] == "markdown":
        markdown(sys.argv[2])
    else:
        sys.exit(__doc__)
