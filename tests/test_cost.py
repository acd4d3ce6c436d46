"""What it costs: a run's results carry each candidate's GPU-seconds and cost, the summary the cost
per written image; bad [cost] values are refused."""

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.config import ConfigError, load_job
from pipeline.job import EXIT_OK, run_job
from tests.helpers import write_job

# Style 'studio' runs 2 steps, 'brand' 3, no style the [generate] default (2); all 64x64.
ROWS = {"id": ["a", "b", "c"], "prompt": ["a mug", "a lamp", "a chair"], "style": ["studio", "brand", None]}
PRICE, SECONDS, AT_STEPS, GPUS = 2.5, 0.8, 4, 2
COST = f"""
[cost]
gpu_hour_usd = {PRICE}
gpus = {GPUS}
[[cost.throughput]]
model = "embedded:tiny-sd"
width = 64
height = 64
steps = {AT_STEPS}
seconds_per_image = {SECONDS}
"""


@pytest.fixture(scope="module")
def ran(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cost")
    # no throughput: only a price, so a second plan must use what the run measured
    job = write_job(folder, ROWS, extra=f"[cost]\ngpu_hour_usd = {PRICE}\n", num_candidates=2, keep=1)
    report = run_job(load_job(job), backend="in-process")
    assert report.exit_code == EXIT_OK
    return job, report, pq.read_table(report.output_dir / "results.parquet")


def test_results_carry_gpu_seconds_and_cost(ran):
    _, report, table = ran
    rows = table.to_pylist()
    assert rows and all(r["ms_generate"] is not None for r in rows)
    for r in rows:
        gpu_s = (r["ms_generate"] + r["ms_score"] + r["ms_moderate"]) / 1000
        assert r["gpu_s"] == pytest.approx(gpu_s)
        assert r["cost_usd"] == pytest.approx(gpu_s * PRICE / 3600)
    summary = json.loads((report.output_dir / "summary.json").read_text())
    assert summary["gpu_hour_usd"] == PRICE
    assert summary["gpu_s_total"] == pytest.approx(sum(r["gpu_s"] for r in rows), abs=1e-6)  # rounded
    total = sum(r["cost_usd"] for r in rows)
    assert summary["cost_usd_total"] == pytest.approx(total)
    written = pc.sum(pc.equal(table["status"], "written")).as_py()
    assert written == 3 < len(rows)  # two candidates a row, one kept: over-generation is paid for
    assert summary["cost_per_written_image_usd"] == pytest.approx(total / written)


def test_results_without_cost_have_gpu_seconds_and_no_price(tmp_path):
    job = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]})
    report = run_job(load_job(job), backend="in-process")
    table = pq.read_table(report.output_dir / "results.parquet")
    assert table["gpu_s"].null_count == 0 and table["cost_usd"].null_count == table.num_rows
    summary = json.loads((report.output_dir / "summary.json").read_text())
    assert summary["gpu_s_total"] > 0 and summary["cost_usd_total"] is None
    assert summary["cost_per_written_image_usd"] is None


@pytest.mark.parametrize("extra, key", [
    ("[cost]\ngpu_hour_usd = -1\n", "[cost].gpu_hour_usd"),
    ('[cost]\ngpu_hour_usd = "cheap"\n', "[cost].gpu_hour_usd"),
    ("[cost]\ngpus = -2\n", "[cost].gpus"),
    ("[cost]\ngpu_hour = 2\n", "did you mean 'gpu_hour_usd'"),
    (COST.replace(f"seconds_per_image = {SECONDS}", "seconds_per_image = 0"), "seconds_per_image"),
    (COST.replace("width = 64", "width = 63"), "#1.width"),
    (COST.replace("steps = 4\n", ""), "steps required"),
    (COST.replace("steps = 4", "step = 4"), "did you mean 'steps'"),
])
def test_bad_cost_values_are_refused_naming_the_key(tmp_path, extra, key):
    with pytest.raises(ConfigError, match=None) as e:
        load_job(write_job(tmp_path, ROWS, extra=extra))
    assert key in str(e.value)
