"""The job spec: relative paths, overrides, and errors that name the key."""

import re
import tomllib

import pytest

from pipeline.errors import ConfigError
from pipeline.spec.load import load_job


def write(tmp_path, text):
    p = tmp_path / "job.toml"
    p.write_text(text)
    return p


def test_relative_paths_resolve_against_the_job_file(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    p = write(tmp_path / "jobs", '[job]\nmanifest = "../m.parquet"\noutput = "out"\n')
    monkeypatch.chdir("/")
    cfg = load_job(p)
    assert cfg.job.manifest == str(tmp_path / "m.parquet")
    assert cfg.job.output == str(tmp_path / "jobs" / "out")


def test_input_roots_resolve_against_the_job_file(tmp_path, monkeypatch):
    (tmp_path / "jobs").mkdir()
    p = write(tmp_path / "jobs", '[job]\nmanifest = "m"\nallowed_input_roots = ["../data", "/abs", "s3://bucket/in"]\n')
    monkeypatch.chdir("/")
    assert load_job(p).job.allowed_input_roots == (str(tmp_path / "data"), "/abs", "s3://bucket/in")


@pytest.mark.parametrize("key, value, expected", [
    ("diffusion", "./sd", "{job}/sd"),  # ./ and ../ mark a local path, existing or not
    ("diffusion", "../sd", "{root}/sd"),
    ("diffusion", "models/sd", "{job}/models/sd"),  # exists beside the job file
    ("diffusion", "org/name", "org/name"),  # a hub id: no such folder beside the job file
    ("diffusion", "embedded:tiny-sd", "embedded:tiny-sd"),
    ("diffusion", "s3://bucket/sd", "s3://bucket/sd"),
    ("diffusion", "/abs/sd", "/abs/sd"),
    ("clip_pretrained", "models/clip.safetensors", "{job}/models/clip.safetensors"),
    ("clip_pretrained", "openai", "openai"),  # an open_clip tag
    ("moderation", "clip-head:heads/h.safetensors", "clip-head:{job}/heads/h.safetensors"),  # always a path
    ("moderation", "embedded:tiny-clip-head", "embedded:tiny-clip-head"),
    ("moderation", "Falconsai/nsfw_image_detection", "Falconsai/nsfw_image_detection"),
    ("prompt_classifier", "./clf", "{job}/clf"),
    ("clip", "local-dir:./clip", "local-dir:{job}/clip"),
    ("clip", "ViT-L-14", "ViT-L-14"),
])
def test_model_paths_resolve_against_the_job_file_and_hub_ids_pass(tmp_path, monkeypatch, key, value, expected):
    folder = tmp_path / "jobs"
    (folder / "models" / "sd").mkdir(parents=True)
    (folder / "models" / "clip.safetensors").write_bytes(b"")
    p = write(folder, f'[job]\nmanifest = "m"\n[models]\n{key} = "{value}"\n')
    monkeypatch.chdir("/")
    assert getattr(load_job(p).models, key) == expected.format(job=folder, root=tmp_path)


def test_cli_overrides_resolve_against_the_working_directory(tmp_path, monkeypatch):
    p = write(tmp_path, '[job]\nmanifest = "m.parquet"\n')
    monkeypatch.chdir(tmp_path)
    cfg = load_job(p, {("job", "output"): "elsewhere", ("job", "manifest"): None})
    assert cfg.job.output == str(tmp_path / "elsewhere")
    assert cfg.job.manifest == str(tmp_path / "m.parquet")


@pytest.mark.parametrize("text, needle", [
    ('[job]\nmanifest = "m"\nbogus = 1\n',
     "unknown key 'bogus' in [job] (known: 'allowed_input_roots', 'allowed_input_schemes', 'keep',"),
    ('[job]\nmanifest = "m"\nnum_candiates = 2\n',
     "unknown key 'num_candiates' in [job] (did you mean 'num_candidates'?)"),
    ('[jobs]\nmanifest = "m"\n', "unknown section [jobs] (did you mean [job]?)"),
    ('[job]\nmanifest = "m"\n[paths]\n', "unknown section [paths] (known: [job], [models],"),
    ('[job]\nmanifest = "m"\nseed = "x"\n', "[job].seed: expected an integer"),
    ('[job]\nmanifest = "m"\n[output]\nwrite_rejected = 1\n', "[output].write_rejected: expected true/false"),
    ('[job]\nmanifest = "m"\nkeep = 3\nnum_candidates = 2\n', "[job].keep must be 1..num_candidates"),
    ('[job]\nmanifest = "m"\n[generate]\nwidth = 100\n', "[generate].width must be a multiple of 8"),
    ('[job]\nmanifest = "m"\n[output]\nformat = "gif"\n', "[output].format"),
    ('[job]\nmanifest = "m"\n[generate]\ninpaint_strength = 0\n', "[generate].inpaint_strength must be in (0, 1]"),
    ('[job]\nname = "x"\n', "[job].manifest is required"),
    ('[job\n', "not valid TOML"),
    ('[job]\nmanifest = "m"\n[signer]\nmode = "files"\ncert_chain = "nope.pem"\nprivate_key = "k.pem"\n',
     "[signer].cert_chain: file not found"),
    ('[job]\nmanifest = "m"\n[signer]\nmode = "files"\ncert_chain_env = "NO_SUCH_VAR_X"\n'
     'private_key_env = "NO_SUCH_VAR_Y"\n', "environment variable NO_SUCH_VAR_X is not set"),
    ('[job]\nmanifest = "m"\n[signer]\ntsa_url = "timestamp.example.com"\n',
     "[signer].tsa_url must be an http:// or https:// URL of an RFC 3161 timestamp authority, "
     "got 'timestamp.example.com'"),
    ('[job]\nmanifest = "m"\n[signer]\ntsa_url = "ftp://tsa.example.com/"\n',
     "[signer].tsa_url must be an http:// or https:// URL"),
    ('[job]\nmanifest = "m"\n[signer]\ntsa_url = "http://"\n', "got 'http://'"),
])
def test_bad_specs_name_the_key(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, text))
    assert needle in str(e.value)
    assert str(tmp_path / "job.toml") in str(e.value)


@pytest.mark.parametrize("section, key, value, needle", [
    ("cluster", "gpus_per_actor", "0", "[cluster].gpus_per_actor must be > 0, got 0.0"),  # runner divides by it
    ("cluster", "cpus_per_actor", "0", "[cluster].cpus_per_actor must be > 0, got 0.0"),
    ("cluster", "cpus_per_writer", "-0.5", "[cluster].cpus_per_writer must be > 0, got -0.5"),
    ("cluster", "generate_actors", "-1", "[cluster].generate_actors must be >= 0, got -1"),
    ("cluster", "write_actors", "-2", "[cluster].write_actors must be >= 0, got -2"),
    ("cluster", "torch_threads", "-1", "[cluster].torch_threads must be >= 0, got -1"),
    ("filter", "clip_threshold", "150", "[filter].clip_threshold must be 0..100, got 150.0"),
    ("filter", "image_unsafe_threshold", "1.5", "[filter].image_unsafe_threshold must be 0..1, got 1.5"),
    ("filter", "prompt_unsafe_threshold", "-0.1", "[filter].prompt_unsafe_threshold must be 0..1, got -0.1"),
    ("models", "device", '"gpu"', "[models].device must be auto, cpu, mps, cuda or cuda:N, got 'gpu'"),
    ("models", "device", '"cuda:x"', "got 'cuda:x'"),
    ("models", "dtype", '"fp16"', "[models].dtype must be one of auto, float32, float16, bfloat16, got 'fp16'"),
    ("output", "format", '"gif"', "[output].format must be one of png, jpeg, webp, got 'gif'"),
    ("output", "jpeg_quality", "0", "[output].jpeg_quality must be 1..100, got 0"),
    ("job", "max_failed_fraction", "1.5", "[job].max_failed_fraction must be 0..1, got 1.5"),
    ("job", "keep", "3", "[job].keep must be 1..num_candidates (1), got 3"),
    ("signer", "algorithm", '"rot13"',
     "[signer].algorithm must be one of es256, es384, es512, ps256, ps384, ps512, ed25519, got 'rot13'"),
    ("signer", "algorithm", '""', "[signer].algorithm must be one of es256, es384, es512, ps256, ps384, ps512, "
                                  "ed25519, got ''"),
    ("signer", "algorithm", '"ES256"', "got 'ES256' (did you mean 'es256'?)"),
    ("signer", "algorithm", '"ps265"', "got 'ps265' (did you mean 'ps256'?)"),
    ("output", "format", '"PNG"', "got 'PNG' (did you mean 'png'?)"),
    ("models", "diffusion", '"embedded:no-such-model"',
     "[models].diffusion: unknown embedded model 'no-such-model' (known: 'embedded:tiny-sd', 'embedded:tiny-sdxl', "
     "'embedded:tiny-flux', 'embedded:tiny-flux-schnell', 'embedded:tiny-sd3')"),
    ("models", "diffusion", '"embedded:tiny-sdd"',
     "unknown embedded model 'tiny-sdd' (did you mean 'embedded:tiny-sd'?)"),
    ("models", "diffusion", '"embedded:"', "[models].diffusion: unknown embedded model ''"),
    ("models", "clip", '"embedded:tiny-sd"',
     "[models].clip: embedded:tiny-sd is the embedded diffusion model, not a clip model (known: embedded:tiny-clip)"),
    ("models", "moderation", '"embedded:tiny-clip"', "not a moderation model (known: embedded:tiny-nsfw, "
                                                     "embedded:tiny-clip-head)"),
    ("models", "prompt_classifier", '"embedded:tiny-nsfw"', "there is no embedded prompt_classifier model"),
])
def test_out_of_range_values_are_named_with_what_is_allowed(tmp_path, section, key, value, needle):
    text = '[job]\nmanifest = "m"\n' + (f"{key} = {value}\n" if section == "job" else f"[{section}]\n{key} = {value}\n")
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, text))
    assert needle in str(e.value)


@pytest.mark.parametrize("section, key, value", [
    ("models", "device", '"cuda:1"'), ("models", "device", '"mps"'), ("models", "device", '"cpu"'),
    ("filter", "image_unsafe_threshold", "1.0"), ("filter", "prompt_unsafe_threshold", "0"),
    ("filter", "clip_threshold", "100"), ("cluster", "gpus_per_actor", "0.25"), ("cluster", "torch_threads", "0"),
    ("signer", "algorithm", '"ed25519"'), ("signer", "algorithm", '"ps512"'),
    ("signer", "tsa_url", '"http://127.0.0.1:8318/tsa"'), ("signer", "tsa_url", '"https://tsa.example.com"'),
    ("models", "diffusion", '"embedded:tiny-sdxl"'), ("models", "moderation", '"embedded:tiny-clip-head"'),
])
def test_edge_values_are_accepted(tmp_path, section, key, value):
    cfg = load_job(write(tmp_path, f'[job]\nmanifest = "m"\n[{section}]\n{key} = {value}\n'))
    assert getattr(getattr(cfg, section), key) == tomllib.loads(f"v = {value}")["v"]


def test_missing_job_file(tmp_path):
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.toml")


def test_demo_job_loads():
    cfg = load_job("jobs/demo.toml")
    assert cfg.job.num_candidates >= cfg.job.keep
    assert cfg.models.diffusion.startswith("embedded:")


def test_declared_python_provides_tomllib():
    """config.py reads TOML with the standard library's tomllib, new in 3.11: the package and ruff
    must not promise 3.10 (the stack we test on, transformers 5 and diffusers 0.42, needs 3.11 too)."""
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())
    assert meta["project"]["requires-python"] == ">=3.11"
    assert meta["tool"]["ruff"]["target-version"] == "py311"


MINIMAL = b'[job]\nmanifest = "m"\n'


@pytest.mark.parametrize("data, needle", [
    ('[job]\nname = "café"\nmanifest = "m"\n'.encode("latin-1"),
     "not UTF-8: byte 0xe9 at offset 17 (line 2) cannot be decoded; save the job file as UTF-8"),
    ('[job]\nmanifest = "m"\n'.encode("utf-16"), "the job file is UTF-16"),
    ('[job]\nmanifest = "m"\n'.encode("utf-16-be"), "a NUL byte at offset 0 (line 1)"),
    ('[job]\nmanifest = "m"\n'.encode("utf-32"), "the job file is UTF-32"),
    (b"a = " + b"[" * 5000 + b"]" * 5000 + b"\n", "nested too deep"),
    (b"a = " + b"{b = " * 5000 + b"1" + b"}" * 5000 + b"\n", "nested too deep"),
    (b"#" * (2 << 20), "larger than the limit of 1 MiB for an input (job_bytes)"),
    (b"[job]\nmanifest = \"m\"\x00\n", "a NUL byte at offset 20 (line 2)"),
], ids=["latin-1", "utf-16", "utf-16 without a bom", "utf-32", "arrays 5000 deep", "inline tables 5000 deep",
        "2 MiB", "a nul byte"])
def test_job_files_that_are_not_utf8_toml_are_named(tmp_path, data, needle):
    p = tmp_path / "job.toml"
    p.write_bytes(data)
    with pytest.raises(ConfigError) as e:
        load_job(p)
    assert needle in str(e.value) and str(p) in str(e.value)


def test_a_utf8_byte_order_mark_is_accepted(tmp_path):
    p = tmp_path / "job.toml"
    p.write_bytes(b"\xef\xbb\xbf" + MINIMAL)
    assert load_job(p).job.manifest == str(tmp_path / "m")


@pytest.mark.parametrize("kind, needle", [
    ("folder", "is a folder, not a regular file"),
    ("empty path", "the job file path is empty"),
    ("fifo", "not a regular file"),
    ("device", "not a regular file"),
    ("nul in path", "not a usable path"),
    ("under a file", "job file not found"),
])
def test_a_job_path_that_is_not_a_file_is_refused_without_blocking(tmp_path, kind, needle):
    import os

    path = {"folder": str(tmp_path), "empty path": "", "fifo": str(tmp_path / "job.toml"), "device": "/dev/zero",
            "nul in path": "job\x00.toml", "under a file": str(tmp_path / "f" / "job.toml")}[kind]
    if kind == "fifo":
        os.mkfifo(path)  # nobody writes it: opening it for a blocking read would wait for ever
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match=re.escape(needle)):
        load_job(path)


def test_signing_algorithms_are_the_ones_c2pa_signs_with():
    """[signer].algorithm is checked when the job is validated, against the list c2pa-python has."""
    import c2pa

    from pipeline.spec.limits import CHOICES

    assert sorted(CHOICES["algorithm"]) == sorted(a.name.lower() for a in c2pa.C2paSigningAlg)


@pytest.mark.parametrize("text, needle", [
    ('[job]\nmanifest = "m\\u0000.parquet"\n', "[job].manifest: a path or model name cannot hold a NUL byte"),
    ('[job]\nmanifest = "m"\n[models]\ndiffusion = "./a\\u0000b"\n', "[models].diffusion: a path or model name"),
    ('[job]\nmanifest = "m"\n[cluster]\ngpus_per_actor = inf\n', "[cluster].gpus_per_actor: expected a finite "
                                                                  "number, got inf"),
    ('[job]\nmanifest = "m"\n[cost]\ngpu_hour_usd = nan\n', "[cost].gpu_hour_usd: expected a finite number, got nan"),
])
def test_values_no_path_or_number_can_be_are_named(tmp_path, text, needle):
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, text))
    assert needle in str(e.value)


def test_a_model_or_signer_name_too_long_for_a_path_is_not_looked_up_as_one(tmp_path):
    """A name the system cannot look up (ENAMETOOLONG) is not a path beside the job file."""
    long = "x" * 5000
    cfg = load_job(write(tmp_path, f'[job]\nmanifest = "m"\n[models]\nclip = "{long}"\n'))
    assert cfg.models.clip == long
    with pytest.raises(ConfigError, match=r"\[signer\].cert_chain: file not found"):
        load_job(write(tmp_path, f'[job]\nmanifest = "m"\n[signer]\nmode = "files"\ncert_chain = "{long}"\n'
                                 'private_key = "k"\n'))


def test_every_problem_of_a_job_file_is_named_at_once(tmp_path):
    text = ('[job]\nmanifest = "m"\nnum_candiates = 2\nseed = "x"\n[models]\ndiffusion = "embedded:nope"\n'
            '[generate]\nwidth = 100\nsteps = 0\n[signer]\nalgorithm = "rot13"\n[paths]\n')
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, text))
    first = str(e.value).splitlines()
    assert len(first) == 3 and "unknown section [paths]" in first[0]
    assert "unknown key 'num_candiates' in [job]" in first[1] and "[job].seed: expected an integer" in first[2]
    with pytest.raises(ConfigError) as e:  # the spelling fixed: every value out of range, named
        load_job(write(tmp_path, text.replace("num_candiates", "num_candidates").replace('"x"', "1")
                       .replace("[paths]\n", "")))
    lines = str(e.value).splitlines()
    assert len(lines) == 4 and all(line.startswith(str(tmp_path / "job.toml")) for line in lines)
    for needle in ("[generate].steps must be 1..1000", "[generate].width must be a multiple of 8",
                   "[signer].algorithm must be one of", "[models].diffusion: unknown embedded model 'nope'"):
        assert sum(needle in line for line in lines) == 1, (needle, lines)


def test_thousands_of_problems_are_capped(tmp_path):
    text = '[job]\nmanifest = "m"\n' + "".join(f"k{i} = 1\n" for i in range(3000))
    with pytest.raises(ConfigError) as e:
        load_job(write(tmp_path, text))
    lines = str(e.value).splitlines()
    assert len(lines) == 51 and lines[-1] == "... and 2950 more"
