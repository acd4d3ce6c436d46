"""What an actor pays to switch diffusion models: the load of a dropped model (capacity 1) against
a held one (capacity 2), in milliseconds and in images of generation, through the actor's own
path (`HeldModels` over `load_diffusion`).

    python -m bench.model_switch                       # the embedded tiny SD and SDXL on CPU
    python -m bench.model_switch --a /m/sd15 --b /m/sdxl --device cuda --width 512 --height 512
"""

from __future__ import annotations

import argparse
import statistics
import time

from bench.common import PROMPTS, emit, machine, table


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", default="embedded:tiny-sd")
    ap.add_argument("--b", default="embedded:tiny-sdxl")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--height", type=int, default=64)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--switches", type=int, default=5)
    ap.add_argument("--json")
    return ap.parse_args()


def main() -> None:
    import torch

    from pipeline.models import diffusion, loading
    from pipeline.models.held import HeldModels

    args = parse()
    loading.quiet_libraries()
    device = loading.resolve_device(args.device)
    dtype = loading.resolve_dtype(args.dtype, device)

    def load(spec):
        return diffusion.load_diffusion(spec, revision=None, scheduler=None, device=device, dtype=dtype)

    def generate_ms(pipes) -> float:
        t0 = time.perf_counter()
        with torch.inference_mode():
            pipes.t2i(prompt=PROMPTS[:2], num_inference_steps=args.steps, width=args.width, height=args.height,
                      generator=[torch.Generator("cpu").manual_seed(i) for i in range(2)], output_type="np")
        return (time.perf_counter() - t0) * 1000 / 2

    def timed_get(held, spec) -> float:
        t0 = time.perf_counter()
        held.get(spec)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return (time.perf_counter() - t0) * 1000

    one, two = HeldModels(load, capacity=1), HeldModels(load, capacity=2)
    first = {spec: timed_get(one, spec) for spec in (args.a, args.b)}  # the first load of each
    for spec in (args.a, args.b):
        two.get(spec)
    per_image = {spec: statistics.median(generate_ms(two.get(spec)) for _ in range(3)) for spec in (args.a, args.b)}
    dropped, held = [], []
    for i in range(args.switches):
        spec = (args.a, args.b)[i % 2]
        dropped.append(timed_get(one, spec))
        held.append(timed_get(two, spec))
    switch = statistics.median(dropped)
    result = {
        "machine": machine(), "device": device, "dtype": str(dtype), "models": [args.a, args.b],
        "size": [args.width, args.height], "steps": args.steps,
        "first_load_ms": first, "switch_ms_capacity_1": round(switch, 1),
        "switch_ms_capacity_2": round(statistics.median(held), 3),
        "generate_ms_per_image": {k: round(v, 1) for k, v in per_image.items()},
        "switch_in_images": round(switch / statistics.mean(per_image.values()), 2),
    }
    print(table([("first load " + k, f"{v:.0f} ms") for k, v in first.items()]
                + [("switch, capacity 1 (load again)", f"{switch:.0f} ms"),
                   ("switch, capacity 2 (held)", f"{result['switch_ms_capacity_2']:.3f} ms"),
                   *((f"generate {k}", f"{v:.1f} ms/image") for k, v in per_image.items()),
                   ("a switch costs", f"{result['switch_in_images']} images")], "model switch"))
    emit(result, "model_switch", args.json)


if __name__ == "__main__":
    main()
