"""The driver's side of streaming stays flat in the number of units (issue 20, "Ray at scale").

What the driver keeps per unit (which model it needs, which are left to hand out) is a few
runs per plan chunk, not an entry per unit: at 1,000,000 units it holds what it holds at
10,000. Routing and hand-out are Ray-free, so that part is measured without Ray."""

import subprocess
import sys
from pathlib import Path

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

