"""Jobs on the diffusion-transformer families beside the UNet ones: settings a family ignores
are warned about before any work, FLUX and SD3 rows run every mode at the planned size, and the
results say which text encoder cut a long prompt."""

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.run.job import run_job
from pipeline.spec.manifest import load_inputs
from tests.helpers import job, save_cutout

LONG = " ".join(["a very detailed product photograph of a ceramic mug"] * 12)  # > 77 CLIP tokens, < 256 T5


def test_settings_a_family_ignores_are_warned_about_by_style(tmp_path):
    styles = {"style": ["fast", "dev", "sd", "sd3"],
              "model": ["embedded:tiny-flux-schnell", "embedded:tiny-flux", None, "embedded:tiny-sd3"],
              "guidance_scale": [3.0, None, 1.0, None], "negative_prompt": [None, "blurry", "blurry", "blurry"]}
    rows = {"id": ["a", "b", "c", "d"], "prompt": ["a mug"] * 4, "style": ["fast", "dev", "sd", "sd3"]}
    warnings = load_inputs(job(tmp_path, rows, styles=styles)).warnings
    assert ("style 'fast': model 'embedded:tiny-flux-schnell' (flux, which has no guidance) ignores its "
            "guidance_scale 3") in warnings
    assert ("style 'dev': model 'embedded:tiny-flux' (flux) ignores the negative prompt unless "
            "[generate].true_cfg_scale is above 1 (it is 1)") in warnings
    assert ("style 'sd': model 'embedded:tiny-sd' (sd) ignores the negative prompt unless guidance_scale is "
            "above 1 (it is 1)") in warnings
    assert not any("'sd3'" in w for w in warnings)  # CFG at the job's 5.0: its negative prompt counts
    runs = load_inputs(job(tmp_path / "cfg", rows, styles=styles, extra="[generate]\ntrue_cfg_scale = 2.0\n"))
    assert not any("'dev'" in w for w in runs.warnings)


def test_flux_and_sd3_rows_run_every_mode_at_the_planned_size_and_name_the_encoder_that_cut(tmp_path):
    cutout = save_cutout(tmp_path / "cutout.png")
    Image.new("RGB", (40, 40), (90, 60, 30)).save(tmp_path / "photo.png")
    styles = {"style": ["flux", "sd3"], "model": ["embedded:tiny-flux", "embedded:tiny-sd3"]}
    rows = {"id": ["t2i-flux", "stage-flux", "img-sd3", "long-flux", "long-sd"],
            "prompt": ["a mug", "a mug on a table", "a lamp", LONG, LONG],
            "style": ["flux", "flux", "sd3", "flux", None],
            "product_image": [None, str(cutout), str(tmp_path / "photo.png"), None, None]}
    cfg = job(tmp_path, rows, styles=styles, num_candidates=1, keep=1, extra="[output]\nwrite_rejected = true\n")
    report = run_job(cfg, backend="local")
    assert report.exit_code == 0, report.summary
    got = {r["id"]: r for r in pq.read_table(report.output_dir / "results.parquet").to_pylist()}
    assert {i: r["mode"] for i, r in got.items()} == {"t2i-flux": "t2i", "stage-flux": "inpaint",
                                                      "img-sd3": "img2img", "long-flux": "t2i", "long-sd": "t2i"}
    for r in got.values():
        assert r["status"] in ("written", "rejected") and r["path"], r
        assert np.asarray(Image.open(report.output_dir / r["path"])).shape == (64, 64, 3), r["id"]
    # FLUX reads the prompt twice: CLIP (77) cut it, T5 (512) did not; SD's one CLIP cut it
    assert (got["long-flux"]["truncated"], got["long-flux"]["truncated_by"]) == (True, "text_encoder:clip")
    assert (got["long-sd"]["truncated"], got["long-sd"]["truncated_by"]) == (True, "text_encoder:clip")
    assert (got["t2i-flux"]["truncated"], got["t2i-flux"]["truncated_by"]) == (False, None)
    assert got["stage-flux"]["scheduler"] == "FlowMatchEulerDiscreteScheduler"


def test_validate_warns_of_each_text_encoder_that_will_cut_a_prompt(tmp_path, capsys):
    from pipeline.cli import main

    huge = " ".join(["a very detailed product photograph of a ceramic mug"] * 70)  # past T5's 512 too
    rows = {"id": ["short", "long", "huge"], "prompt": ["a mug", LONG, huge], "style": ["flux"] * 3}
    from tests.helpers import write_job

    path = write_job(tmp_path, rows, styles={"style": ["flux"], "model": ["embedded:tiny-flux"]}, max_prompt_chars=5000)
    assert main(["validate", str(path)]) == 0
    err = capsys.readouterr().err
    assert "row 1 (id 'long'), column 'prompt'" in err and "text encoder text_encoder:clip reads 77" in err
    assert "row 2 (id 'huge')" in err and "text encoder text_encoder_2:t5 reads 512" in err
    assert "id 'short'" not in err and err.count("text_encoder_2:t5") == 1
