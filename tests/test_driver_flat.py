"""The driver's side of streaming stays flat in the number of units (issue 20, "Ray at scale").

What the driver keeps per unit (which model it needs, which are left to hand out) is a few
runs per plan chunk, not an entry per unit: at 1,000,000 units it holds what it holds at
10,000. Routing and hand-out are Ray-free, so that part is measured without Ray."""

import itertools
import subprocess
import sys
import tracemalloc
from pathlib import Path

import pyarrow as pa
import pytest

ROOT = Path(__file__).resolve().parents[1]

# Builds the work index of `units` units (a plan in 100 chunks, each cut into units of two
# models, as write_work adds them) and hands every unit out through the router to two actors
# (one holds both models, one the second); prints how far the peak resident size rose above
# where it stood before (VmHWM, VmRSS: tracemalloc made the million hand-outs ten times slower).
HAND_OUT = r"""
import sys
from pipeline.plan.models import ModelRef, ModelUse
from pipeline.plan.work import WorkIndex
from pipeline.run.routing import Router

def kib(key):
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith(key + ":"))

units, chunks = int(sys.argv[1]), 100
before = kib("VmRSS")
index = WorkIndex()
for _ in range(chunks):
    for m in (0, 1):
        index.add(ModelRef(f"m{m}"), units // chunks // 2, 1.0, ModelUse())
router = Router(index.unit_model, [[0, 1], [1]])
handed = total = 0
while router.left():
    for actor in (0, 1):
        unit = router.next_for(actor)
        if unit is not None:
            handed, total = handed + 1, total + unit
assert len(index) == handed == units and total == units * (units - 1) // 2, (handed, total)
assert router.next_for(0) is None and router.next_for(1) is None
print((kib("VmHWM") - before) * 1024)
"""


def rose(units: int) -> int:
    """Bytes the peak resident size of a fresh process rose by, routing `units` units."""
    out = subprocess.run([sys.executable, "-c", HAND_OUT, str(units)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, env={"PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr[-3000:]
    return int(out.stdout)


def test_routing_a_million_units_holds_no_more_per_unit_than_ten_thousand():
    small, large = 10_000, 1_000_000
    per_unit = (rose(large) - rose(small)) / (large - small)
    assert per_unit < 2.0, f"{per_unit:.1f} bytes a unit"


class Passing:
    """A stage that does nothing much: its unit back."""

    def __call__(self, table: pa.Table) -> pa.Table:
        return table


def failed(unit: pa.Table, code: str, message: str) -> pa.Table:
    raise AssertionError(f"unit {unit['unit'][0]} failed: {code}: {message}")


@pytest.mark.slow  # about 20 s on 2 cores, a third of it Ray starting
def test_a_ray_run_holds_only_its_units_in_flight_and_its_driver_memory_stays_flat(tmp_path, monkeypatch):
    """5,000 tiny units through real Ray (fractional-CPU actors: two generate actors, a writer):
    the references the driver holds never pass two a unit in flight (a generate call's and its
    write's) plus one an actor, and its memory stays flat once the run is under way."""
    import ray

    from pipeline.plan.work import UnitModels
    from pipeline.run import runner
    from pipeline.run.routing import Pools
    from pipeline.run.units import Factory, Stages

    units = 5_000
    path = tmp_path / "work.arrow"
    with pa.ipc.new_file(path, pa.schema([("unit", pa.int64())])) as work:
        for i in range(units):
            work.write_batch(pa.record_batch([pa.array([i], pa.int64())], names=["unit"]))
    unit_model = UnitModels()
    for run in range(10):  # runs of two models, as a plan's chunks make them
        unit_model.append(run % 2, units // 10)
    pools = Pools(generate_actors=2, gpus_per_actor=0.0, cpus_per_actor=0.25, write_actors=1, cpus_per_writer=0.25)
    in_flight = runner.QUEUE_PER_ACTOR * (pools.generate_actors + pools.write_actors)
    stages = Stages(generate_for=lambda models: Factory("generate", Passing), write=Factory("write", Passing),
                    failed=failed, models=2)

    module = sys.modules[__name__]  # not importable on Ray's workers: its stages travel by value
    ray.cloudpickle.register_pickle_by_value(module)
    runner.connect(None)
    try:
        core = ray._private.worker.global_worker.core_worker
        wait, most, sizes = ray.wait, {"waited": 0, "held": 0}, []
        calls = itertools.count()

        def counted_wait(refs, **kw):
            most["waited"] = max(most["waited"], len(refs))
            most["held"] = max(most["held"], len(core.get_all_reference_counts()))
            if not next(calls) % 100:  # about every 50 units: anonymous resident size, Python's allocations
                sizes.append((rss(), tracemalloc.get_traced_memory()[0]))
            return wait(refs, **kw)

        monkeypatch.setattr(ray, "wait", counted_wait)
        tracemalloc.start()
        done = bytearray(units)  # how often each unit came back (a list of them would grow the driver)
        for table in runner.execute(str(path), unit_model, [[0, 1], [1]], stages, pools):
            done[table["unit"][0].as_py()] += 1
    finally:
        tracemalloc.stop()
        ray.shutdown()
        ray.cloudpickle.unregister_pickle_by_value(module)
    assert done == bytearray([1]) * units
    assert most["waited"] <= 2 * in_flight, most
    assert most["held"] <= 2 * in_flight + pools.generate_actors + pools.write_actors, most
    (rss_half, py_half), (rss_end, py_end) = sizes[len(sizes) // 2], sizes[-1]
    # Over the second half (2,500 units): the driver's Python objects by a few bytes a unit (a
    # list of unit numbers would be 90 KiB); its resident size by what Ray's native buffers
    # still take as they fill (0.5-2 MiB measured), not by anything kept per unit.
    assert py_end - py_half < 32 << 10, f"Python allocations grew {(py_end - py_half) >> 10} KiB"
    assert rss_end - rss_half < 8 << 20, f"resident size grew {(rss_end - rss_half) >> 10} KiB"


def rss() -> int:
    return next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("RssAnon:")) * 1024
