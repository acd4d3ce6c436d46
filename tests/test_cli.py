"""The CLI contract scheduled jobs rely on: exit codes, messages naming row and column, no
tracebacks, nothing generated on invalid input."""

import os
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.models import embedded
from tests.helpers import write_job

ROOT = Path(__file__).resolve().parents[1]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=dict(os.environ))


def test_help_needs_no_heavy_imports():
    code = ("import sys; from pipeline.cli import main\n"
            "try: main(['--help'])\nexcept SystemExit: pass\n"
            "heavy = {'torch', 'diffusers', 'ray', 'c2pa', 'open_clip', 'transformers'} & set(sys.modules)\n"
            "assert not heavy, heavy")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_validate_ok_and_plan(tmp_path):
    job = write_job(tmp_path, {"id": ["a", "b"], "prompt": ["x", "y"], "sku": ["1", "2"]},
                    num_candidates=3, keep=2)
    r = cli("validate", str(job))
    assert r.returncode == 0 and "OK: 2 rows, 6 candidates" in r.stdout and "sku" in r.stdout
    r = cli("plan", str(job), "--out", str(tmp_path / "plan.parquet"))
    assert r.returncode == 0 and pq.read_table(tmp_path / "plan.parquet").num_rows == 6


def test_invalid_manifest_exits_1_naming_row_and_column_for_validate_and_run(tmp_path):
    rows = {"id": ["a", "a", "c"], "prompt": ["x", "y", ""], "width": [64, 64, 99]}
    job = write_job(tmp_path, rows)
    for command in ("validate", "run"):
        r = cli(command, str(job))
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr
        assert "row 1 (id 'a'), column 'id': duplicate id" in r.stderr
        assert "row 2 (id 'c'), column 'prompt': empty prompt" in r.stderr
        assert "row 2 (id 'c'), column 'width'" in r.stderr
    assert not (tmp_path / "out" / "images").exists()


def test_bad_job_key_and_manifest_override(tmp_path):
    job = write_job(tmp_path, {"id": ["a"], "prompt": ["x"]}, extra="[generate]\nstepz = 3\n")
    r = cli("validate", str(job))
    assert r.returncode == 1 and "unknown key 'stepz' in [generate] (did you mean 'steps'?)" in r.stderr
    assert "Traceback" not in r.stderr
    good = write_job(tmp_path / "good", {"id": ["a"], "prompt": ["x"]})
    other = write_job(tmp_path / "other", {"id": ["p", "q", "r"], "prompt": ["1", "2", "3"]})
    r = cli("validate", str(good), "--manifest", str(other.parent / "manifest.parquet"))
    assert r.returncode == 0 and "OK: 3 rows" in r.stdout


def test_long_prompt_warning_names_the_row(tmp_path):
    embedded.ensure("tiny-sd")  # the tokenizer travels with the model
    job = write_job(tmp_path, {"id": ["short", "long"], "prompt": ["a mug", "word " * 100]}, styles=None)
    r = cli("validate", str(job))
    assert r.returncode == 0
    assert "row 1 (id 'long'), column 'prompt': 102 tokens" in r.stderr and "short" not in r.stderr


def test_verify_and_report_on_a_folder_without_results(tmp_path):
    assert cli("verify", str(tmp_path)).returncode == 1
    assert cli("report", str(tmp_path)).returncode == 1


def test_an_output_on_a_store_that_cannot_be_locked_or_reached_is_refused_without_a_traceback(tmp_path):
    """gs:// without gcsfs names the package to install; a store without conditional writes
    (fsspec's memory://, as GCS and Azure today) is refused before anything runs."""
    job = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]}, styles=None)
    missing = cli("run", str(job), "--in-process", "--output", "gs://bucket/out")
    unlockable = cli("run", str(job), "--in-process", "--output", "memory://bucket/out")
    for run in (missing, unlockable):
        assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr[-2000:]
    if "gcsfs" not in {m.name for m in __import__("pkgutil").iter_modules()}:
        assert "gs:// needs gcsfs: pip install 'asset-pipeline[gcs]'" in missing.stderr
    assert "outputs on memory:// are not supported yet" in unlockable.stderr
    assert not (tmp_path / "out").exists()


def test_every_command_that_reads_a_job_file_refuses_a_bad_one_with_exit_1_and_no_traceback(tmp_path, capsys):
    """run, validate and plan read the job through one reader: a Latin-1 file, a FIFO nobody
    writes (it must not hang), a folder, an empty path, an unknown embedded model."""
    from pipeline.cli import main

    good = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]}, styles=None)
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(good.read_bytes().replace(b'name = "t"', 'name = "café"'.encode("latin-1")))
    os.mkfifo(tmp_path / "fifo.toml")
    embedded_typo = tmp_path / "model.toml"
    embedded_typo.write_text(good.read_text() + '\n[models]\ndiffusion = "embedded:no-such-model"\n')
    cases = {str(latin1): "not UTF-8: byte 0xe9 at offset", str(tmp_path / "fifo.toml"): "not a regular file",
             str(tmp_path): "is a folder, not a regular file", "": "the job file path is empty",
             str(embedded_typo): "unknown embedded model 'no-such-model'"}
    for command in ("validate", "plan", "run"):
        for path, needle in cases.items():
            assert main([command, path]) == 1, (command, path)
            err = capsys.readouterr().err
            assert needle in err and "Traceback" not in err, (command, path, err)
    assert not (tmp_path / "out").exists()


def test_a_local_model_whose_tokenizer_cannot_be_read_gives_no_traceback_in_validate(tmp_path, capsys):
    """The prompt-length warning needs the model's tokenizer; one that cannot be read is left to
    the model loader to report, and validate still says OK."""
    from pipeline.cli import main

    for i, (config, tokenizer) in enumerate([('{"model_max_length": "abc"}', "{}"), ("[1]", "{}"),
                                             ("{not json", "{}"), ('{"model_max_length": 20}', "not json")]):
        folder = tmp_path / f"m{i}"
        (folder / "tokenizer").mkdir(parents=True)
        (folder / "tokenizer" / "tokenizer_config.json").write_text(config)
        (folder / "tokenizer" / "tokenizer.json").write_text(tokenizer)
        job = write_job(tmp_path / f"j{i}", {"id": ["a"], "prompt": ["word " * 40]}, styles=None,
                        extra=f'[models]\ndiffusion = "{folder}"\n')
        assert main(["validate", str(job)]) == 0, (config, tokenizer)
        assert "OK: 1 rows" in capsys.readouterr().out


def test_plan_out_to_a_folder_or_nowhere_exits_1_naming_it(tmp_path, capsys):
    from pipeline.cli import main

    job = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]}, styles=None)
    for out in (tmp_path, tmp_path / "no" / "such" / "plan.parquet", Path("/proc/plan.parquet")):  # /proc: no files
        assert main(["plan", str(job), "--out", str(out)]) == 1
        err = capsys.readouterr().err
        assert f"error: --out {out}: cannot write the plan there" in err and "Traceback" not in err


def test_a_model_that_cannot_load_in_process_exits_1_with_its_message_and_no_traceback(tmp_path, capsys):
    """A model load failure is one of the pipeline's errors: the command line names the model and
    exits 1 (on Ray the runner reports it as an actor that could not start, also exit 1)."""
    from pipeline.cli import main

    model = tmp_path / "broken-model"  # looks like a diffusers pipeline to validation; no weights
    model.mkdir()
    (model / "model_index.json").write_text('{"_class_name": "StableDiffusionPipeline", '
                                            '"unet": ["diffusers", "UNet2DConditionModel"]}')
    job = write_job(tmp_path, {"id": ["a"], "prompt": ["a mug"]}, styles=None,
                    extra=f'[models]\ndiffusion = "{model}"\n')
    assert main(["run", str(job), "--in-process", "--output", str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert f"error: cannot load diffusion model '{model}'" in err and "Traceback" not in err, err[-2000:]


def test_a_plan_cut_short_leaves_the_earlier_plan_file_as_it_was(tmp_path, monkeypatch, capsys):
    """`plan --out` writes a temp file that becomes the plan only when the whole plan is written."""
    import pipeline.plan.build as build
    from pipeline.cli import main

    job = write_job(tmp_path, {"id": ["a", "b"], "prompt": ["a mug", "a lamp"]}, styles=None)
    out = tmp_path / "plan.parquet"
    assert main(["plan", str(job), "--out", str(out)]) == 0
    before = out.read_bytes()
    planned = build.plan_chunks

    def cut_short(*args, **kwargs):
        yield next(iter(planned(*args, **kwargs))).slice(0, 1)  # the first rows, then the end
        raise MemoryError("killed half-way")

    monkeypatch.setattr(build, "plan_chunks", cut_short)
    with pytest.raises(MemoryError):
        main(["plan", str(job), "--out", str(out)])
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")) == []
