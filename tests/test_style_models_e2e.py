"""One job, two models (a style on embedded:tiny-sdxl beside the job's embedded:tiny-sd), through
the real CLI and real Ray: both styles written and verified, any row regenerated alone to the
same pixels, and a driver killed mid-run then rerun leaves every candidate exactly once."""

import signal

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.helpers import write_job
from tests.test_kill_rerun import assert_complete, run
from tests.test_ray_e2e import assert_regenerated_alike, cli

pytestmark = pytest.mark.slow
ROWS = {"id": ["mug", "lamp", "shoe", "bag"], "prompt": ["a red mug", "a desk lamp", "running shoes", "a bag"],
        "style": ["studio", "lifestyle", "studio", "lifestyle"]}
STYLES = {"style": ["studio", "lifestyle"], "model": ["embedded:tiny-sdxl", None],
          "prompt_template": ["{prompt}, studio photo", None]}


def test_two_models_in_one_job_on_two_actors_written_verified_and_regenerated_alone(tmp_path):
    job = write_job(tmp_path, ROWS, styles=STYLES, num_candidates=2, keep=1,
                    extra="[output]\nwrite_rejected = true\n[cluster]\ngenerate_actors = 2\n")
    full = cli("run", str(job), "--output", str(tmp_path / "full"))
    assert full.returncode == 0, full.stderr[-3000:]
    assert "models: 2; embedded:tiny-sd on 1 actor(s); embedded:tiny-sdxl on 1 actor(s)" in full.stderr
    ver = cli("verify", str(tmp_path / "full"))
    assert ver.returncode == 0 and "verified 8 image(s): OK" in ver.stdout, ver.stdout + ver.stderr
    table = pq.read_table(tmp_path / "full" / "results.parquet")
    made = {(r["style"], r["model"], r["status"]) for r in table.to_pylist()}
    assert {(s, m) for s, m, _ in made} == {("studio", "embedded:tiny-sdxl"), ("lifestyle", "embedded:tiny-sd")}
    assert {s for s, _, status in made if status == "written"} == {"studio", "lifestyle"}

    # a row of each model alone, in its own output: the same item ids and the same pixels
    assert_regenerated_alike(job, tmp_path / "full", table, "mug,lamp", tmp_path / "alone", files=4)


def test_a_mixed_job_resumes_after_a_kill_regenerates_any_row_alone_and_verifies(tmp_path):
    """Several styles: two UNet models and both transformer families, style and structure images
    on either kind, a LoRA and pinned seeds, in one job, through Ray; the driver killed mid-run,
    then rerun."""
    from PIL import Image

    from tests.helpers import make_lora

    lora = make_lora(tmp_path / "lora")
    Image.new("RGB", (48, 48), (220, 120, 30)).save(tmp_path / "warm.png")
    layout = Image.new("RGB", (64, 64), (0, 0, 0))
    layout.paste((255, 255, 255), (12, 12, 52, 52))
    layout.save(tmp_path / "layout.png")
    styles = {"style": ["studio", "lifestyle", "flux", "sd3"],
              "model": ["embedded:tiny-sdxl", None, "embedded:tiny-flux", "embedded:tiny-sd3"],
              "style_image": ["warm.png", "warm.png", "warm.png", None],
              "structure_image": [None, "layout.png", "layout.png", "layout.png"],
              "lora": [None, str(lora), None, None],
              "seeds": pa.array([None, [11, 22], None, None], pa.list_(pa.int64())),
              "guidance_scale": [None, None, 3.5, None]}
    rows = {"id": [f"r{i}" for i in range(8)], "prompt": [f"product photo {i}" for i in range(8)],
            "style": ["studio", "lifestyle", "flux", "sd3"] * 2}
    extra = ("[generate]\nsteps = 2\nwidth = 64\nheight = 64\nbatch_size = 2\n[output]\nshard_rows = 2\n"
             '[models]\nip_adapter = "embedded:tiny-ip-adapter"\ncontrolnet = "embedded:tiny-controlnet"\n')
    job = write_job(tmp_path, rows, styles=styles, extra=extra, num_candidates=2, keep=1)
    out = tmp_path / "out"
    first = run(job, out, "driver.kill_after_shard=2")
    assert first.returncode == -signal.SIGKILL, first.stderr[-2000:]
    second = run(job, out)
    assert second.returncode == 0, second.stderr[-3000:]
    assert_complete(out, 16)  # exactly once, every file verified, no strays
    table = pq.read_table(out / "results.parquet")
    got = table.to_pylist()
    assert {r["style"]: r["model"] for r in got} == {"studio": "embedded:tiny-sdxl", "lifestyle": "embedded:tiny-sd",
                                                      "flux": "embedded:tiny-flux", "sd3": "embedded:tiny-sd3"}
    assert {r["seed"] for r in got if r["style"] == "lifestyle"} == {11, 22}
    # a row of each style alone, in its own output: the same items and the same pixels (the kept one each)
    assert_regenerated_alike(job, out, table, "r0,r1,r2,r3", tmp_path / "alone", files=4)
