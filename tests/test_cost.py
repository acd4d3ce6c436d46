"""What it costs: `plan` estimates GPU time and money per style and mode from [cost]; a run's
results carry each candidate's GPU-seconds and cost, the summary the cost per written image."""

import json

import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from pipeline.errors import EXIT_OK, ConfigError
from pipeline.review.cost import estimate, format_estimate
from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from tests.helpers import write_job
from tests.test_cli import cli

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


def _lines(stdout: str) -> dict[tuple[str, str], list[str]]:
    """The estimate table by (style, mode), the model column left out."""
    table = stdout[stdout.index("style"):].splitlines()[1:]
    return {(c[0], c[1] if c[0] != "total" else ""): c[3:] if c[0] != "total" else c[1:]
            for c in (line.split() for line in table)}


def test_plan_prints_the_estimate_per_style_and_mode(tmp_path):
    job = write_job(tmp_path, ROWS, extra=COST, num_candidates=3, keep=1)
    r = cli("plan", str(job))
    assert r.returncode == 0, r.stderr
    assert f"on {GPUS} GPU(s) at ${PRICE}/GPU-hour" in r.stdout
    lines = _lines(r.stdout)
    total = 0.0
    for style, steps in (("studio", 2), ("brand", 3), ("-", 2)):
        candidates, gpu_s, _, cost = lines[(style, "t2i")]
        expected = 3 * SECONDS / AT_STEPS * steps  # linear in steps
        total += expected
        assert candidates == "3"
        assert float(gpu_s) == pytest.approx(expected, abs=0.05)
        assert float(cost) == pytest.approx(expected * PRICE / 3600, abs=1e-4)
    candidates, gpu_s, wall, cost = lines[("total", "")]
    assert candidates == "9" and float(gpu_s) == pytest.approx(total, abs=0.05)
    assert wall == f"{total / GPUS:.1f}s"
    assert float(cost) == pytest.approx(total * PRICE / 3600, abs=1e-4)


def test_plan_counts_the_channel_formats_the_kept_images_will_get(tmp_path):
    """Formats are planned once their sources are judged; the estimate counts them beforehand:
    each row's kept images times its style's formats, on the canvas each format outpaints."""
    throughput = "".join(f"""
[[cost.throughput]]
model = "embedded:tiny-sd"
width = {w}
height = {h}
steps = 1
seconds_per_image = {s}
""" for w, h, s in ((64, 112, 0.5), (112, 64, 0.25)))
    styles = {"style": ["studio", "brand"], "steps": [2, 4], "formats": [["9:16"], None]}
    job = write_job(tmp_path, ROWS, styles=styles, num_candidates=3, keep=2,
                    extra=COST + throughput + '[formats]\nsizes = ["16:9"]\nstrength = 0.5\n')
    r = cli("plan", str(job))
    assert r.returncode == 0, r.stderr
    assert "then 6 channel format(s) of the kept images (outpaint), planned once they are judged" in r.stdout
    lines = _lines(r.stdout)
    # studio: 2 kept × 9:16 on a 64×112 canvas, 2 steps × 0.5 strength = 1 step at 0.5 s
    assert lines[("studio", "outpaint")][:2] == ["2", "1.0"]
    # brand: the job's 16:9 (112×64), 4 × 0.5 = 2 steps at 0.25 s; no style: the job's too (steps 2 → 1)
    assert lines[("brand", "outpaint")][:2] == ["2", "1.0"] and lines[("-", "outpaint")][:2] == ["2", "0.5"]
    assert lines[("total", "")][0] == "15"


def test_plan_streams_chunks_to_the_same_plan_and_estimate(tmp_path, monkeypatch, capsys):
    """`plan` plans, writes and counts a chunk of manifest rows at a time (a long manifest is never
    planned whole): the file and the estimate are the whole plan's."""
    from pipeline.cli import main
    from pipeline.plan import build as plan
    from pipeline.spec.manifest import load_inputs

    job = write_job(tmp_path, ROWS, extra=COST, num_candidates=3, keep=1)
    cfg = load_job(job)
    whole = plan.build_plan(load_inputs(cfg), cfg)
    monkeypatch.setattr(plan, "CHUNK_ROWS", 1)  # one manifest row per chunk
    assert main(["plan", str(job), "--out", str(tmp_path / "plan.parquet")]) == 0
    written = pq.ParquetFile(tmp_path / "plan.parquet")
    assert written.num_row_groups == len(ROWS["id"]) and written.read().equals(whole)
    out = capsys.readouterr().out
    assert f"wrote {whole.num_rows} candidates" in out
    assert _lines(out) == _lines(format_estimate(estimate(whole, cfg), cfg))


def test_plan_without_cost_prints_as_before_and_unknown_shape_says_unknown(tmp_path):
    job = write_job(tmp_path / "plain", ROWS)
    r = cli("plan", str(job))
    assert r.returncode == 0 and "estimate" not in r.stdout and "gpu_s" not in r.stdout
    job = write_job(tmp_path / "other", ROWS, extra=COST.replace("width = 64", "width = 128"))
    r = cli("plan", str(job))
    assert r.returncode == 0, r.stderr
    lines = _lines(r.stdout)
    assert lines[("studio", "t2i")][1:] == ["unknown"] * 3
    assert lines[("total", "")][1:] == ["unknown"] * 3


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


def test_second_plan_uses_the_throughput_measured_in_the_output(ran):
    job, _, table = ran
    r = cli("plan", str(job))
    assert r.returncode == 0, r.stderr
    per_step = pc.mean(pc.divide(table["gpu_s"], pc.cast(table["steps"], "double"))).as_py()
    expected = sum(per_step * s for s in table["steps"].to_pylist())
    candidates, gpu_s, _, cost = _lines(r.stdout)[("total", "")]
    assert candidates == str(table.num_rows)
    assert float(gpu_s) == pytest.approx(expected, abs=0.05)
    assert float(cost) == pytest.approx(expected * PRICE / 3600, abs=1e-4)


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


def test_an_estimate_reads_only_the_columns_it_sums_of_results_on_object_storage(tmp_path, s3, monkeypatch):
    """Measured throughput comes from five columns of `results.parquet`: on object storage only
    their byte ranges are fetched, not a results table of every passthrough column."""
    import numpy as np
    import pyarrow as pa
    import s3fs

    from pipeline.plan.build import build_plan
    from pipeline.spec.manifest import load_inputs
    from pipeline.storage import tables

    job = write_job(tmp_path, ROWS, extra=f"[cost]\ngpu_hour_usd = {PRICE}\n", output=f"s3://{s3.bucket}/out")
    cfg = load_job(job)
    plan = build_plan(load_inputs(cfg), cfg)
    ran = plan.select(["model", "width", "height", "steps"])
    results = ran.append_column("gpu_s", pa.array([0.25 * s for s in ran["steps"].to_pylist()]))
    # a wide passthrough column, as a catalogue's descriptions or embeddings would be
    results = results.append_column("blob", pa.array([np.random.default_rng(i).bytes(3_000_000)
                                                      for i in range(results.num_rows)]))
    data = tables.to_bytes(results)
    s3.fs().pipe(f"{s3.bucket}/out/results.parquet", data)

    fetched: list[int] = []
    call_s3 = s3fs.S3FileSystem._call_s3

    async def counted(self, method, *args, **kwargs):
        response = await call_s3(self, method, *args, **kwargs)
        if method == "get_object":
            fetched.append(response["ContentLength"])
        return response

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", counted)
    total = estimate(plan, cfg)[-1]
    assert total["gpu_s"] == pytest.approx(0.25 * sum(plan["steps"].to_pylist()))  # measured: 0.25 s a step
    assert fetched and sum(fetched) < len(data) / 4, (sum(fetched), len(data))
