"""Shared bits of the benchmarks: machine description, RSS, table printing, JSON output."""

from __future__ import annotations

import json
import os
import platform
import resource
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def machine() -> dict:
    cpu = platform.processor() or ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(), "gpu": None}
    try:
        import torch

        info["torch"] = torch.__version__
        if torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    return info


def peak_rss_mb() -> float:
    """This process's peak resident memory, in MB. On Linux VmHWM, which `reset_peak_rss` can
    restart: ru_maxrss of a child starts at its parent's size when it forked."""
    try:
        return rss_mb("VmHWM")
    except OSError:
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def reset_peak_rss() -> None:
    """Start a new peak (Linux: VmHWM), so a phase's peak is its own."""
    Path("/proc/self/clear_refs").write_text("5")


def rss_mb(field: str = "VmRSS") -> float:
    """Resident memory now (VmRSS) or since the last reset (VmHWM), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def table(rows: list[tuple[str, object]], title: str) -> str:
    width = max(len(k) for k, _ in rows)
    lines = [title, "-" * len(title)]
    for k, v in rows:
        lines.append(f"{k:<{width}}  {v:.4g}" if isinstance(v, float) else f"{k:<{width}}  {v}")
    return "\n".join(lines)


def emit(result: dict, name: str, json_path: str | None) -> None:
    """The JSON object as the last line of stdout, and into a file."""
    path = Path(json_path) if json_path else ROOT / "out" / "bench" / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result))


# The prompts every bench cycles through, and the generation settings they share: one place,
# so the bare loop, the pipeline and the batch-invariance check make the same images.
PROMPTS = ["a ceramic mug on a wooden table", "running shoes, studio light", "a leather handbag, autumn",
           "a desk lamp, minimalist", "a bottle of olive oil, kitchen", "a wristwatch on marble"]


def add_generation_args(ap) -> None:
    """The model and generation settings of a bench (defaults: the embedded tiny model on CPU)."""
    ap.add_argument("--model", default="embedded:tiny-sd")
    ap.add_argument("--width", type=int, default=256)
    ap.add_argument("--height", type=int, default=256)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--guidance", type=float, default=5.0)
    ap.add_argument("--batch-size", type=int, default=4)


def job_toml(sections: dict[str, dict]) -> str:
    """A job file's text from {section: {key: value}}: strings quoted, booleans in TOML's case."""
    def value(v) -> str:
        return str(v).lower() if isinstance(v, bool) else f'"{v}"' if isinstance(v, str) else str(v)

    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in keys.items())
                   for name, keys in sections.items() if keys)
