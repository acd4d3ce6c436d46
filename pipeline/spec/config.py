"""The job spec: `jobs/*.toml` → frozen dataclasses, validated before any work starts.

Relative paths in a job file resolve against the job file's own folder, so a job runs the
same from any working directory. A model spec counts as a path when it starts with `./`, `../`
or `~`, or names something beside the job file; hub ids, `embedded:` names and URIs pass
unchanged. Every error names the key (`[section].key`), the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import os
import re
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, Refused, show

EMBEDDED_PREFIX = "embedded:"
SEED_MAX = 2**63 - 1


@dataclass(frozen=True)
class Limit:
    """An allowed range. The rule and its wording live together, so the job spec, the manifest and
    the styles table accept the same values and say so in the same words."""

    lo: float
    hi: float | None = None  # None: no upper bound
    lo_open: bool = False  # (lo, hi] rather than [lo, hi]
    multiple: int = 1

    def allows(self, x: float) -> bool:
        above = x > self.lo if self.lo_open else x >= self.lo
        return above and (self.hi is None or x <= self.hi) and (self.multiple == 1 or x % self.multiple == 0)

    def __str__(self) -> str:
        if self.hi is None:
            text = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        else:
            text = f"in ({_num(self.lo)}, {_num(self.hi)}]" if self.lo_open else f"{_num(self.lo)}..{_num(self.hi)}"
        return f"a multiple of {self.multiple} in {text}" if self.multiple > 1 else text


def _num(x: float) -> str:
    return "2^63-1" if x == SEED_MAX else f"{x:g}" if isinstance(x, float) else str(x)


# One table of limits for the job spec, the manifest and the styles table.
# Sizes: a multiple of 8 (the VAE of SD-class models downsamples by 8); 32 px is the smallest, since
# the tests and the design's tiny real models run at 32..64 px (the demo at 64); below that the latent
# is 1..3 cells, which no real model denoises into anything. 4096 bounds memory.
LIMITS = {
    "size": Limit(32, 4096, multiple=8),
    "steps": Limit(1, 1000),
    "num_candidates": Limit(1, 64),
    "keep": Limit(1, 64),
    "seed": Limit(0, SEED_MAX),
    "strength": Limit(0, 1, lo_open=True),
    "guidance_scale": Limit(0, 100),  # CFG past ~30 only saturates; 100 catches 750 typed for 7.5
    "lora_scale": Limit(0, 4),
    "clip_threshold": Limit(0, 100),  # a CLIP score is 100 * max(cos, 0) (score.py)
    "unsafe_threshold": Limit(0, 1),  # unsafe scores are probabilities (moderate.py)
    # the job spec's own keys
    "fraction": Limit(0, 1),
    "at_least_one": Limit(1),
    "png_compress_level": Limit(0, 9),
    "quality": Limit(1, 100),
    "resources": Limit(0, lo_open=True),  # Ray GPUs / CPUs per actor: the runner divides by them
    "count": Limit(0),  # actors and threads; 0 = sized from the cluster
    "price": Limit(0),  # [cost].gpu_hour_usd
    "seconds": Limit(0, lo_open=True),  # [[cost.throughput]].seconds_per_image
    # Input files and objects, in bytes: one read whole into memory (a product photo, mask,
    # reference image, decisions file), a manifest or styles table (all its parts together), and
    # a file only hashed or fetched (LoRA weights). Only regular files and objects are read, and
    # never more than the limit, so a wrong path (/dev/zero, a pipe) cannot fill memory or hang.
    "image_bytes": Limit(0, 256 << 20),
    "table_bytes": Limit(0, 4 << 30),
    "weights_bytes": Limit(0, 16 << 30),
    "job_bytes": Limit(0, 1 << 20),  # a job file (TOML): far more than any job needs
}
CHOICES = {
    "format": ("png", "jpeg", "webp"),
    "mode": ("demo", "files"),
    "dtype": ("auto", "float32", "float16", "bfloat16"),
    # the signing algorithms c2pa-python signs with (c2pa.C2paSigningAlg), as [signer].algorithm names them
    "algorithm": ("es256", "es384", "es512", "ps256", "ps384", "ps512", "ed25519"),
}
DEVICE = re.compile(r"auto|cpu|mps|cuda(:\d+)?")


@dataclass(frozen=True)
class JobSection:
    name: str = "job"
    seed: int = 0
    manifest: str = ""
    styles: str = ""
    output: str = "out"
    num_candidates: int = 1
    keep: int = 1
    max_failed_fraction: float = 0.1
    max_prompt_chars: int = 2000
    # Where product/mask/reference/LoRA URIs may point (folders or bucket prefixes such as
    # "s3://bucket/catalogue"); empty = anywhere readable with an allowed scheme.
    allowed_input_roots: tuple[str, ...] = ()
    # URI schemes inputs may use ("file" = local paths); http(s) is off: a manifest row must not
    # make every actor fetch an arbitrary address.
    allowed_input_schemes: tuple[str, ...] = ("file", "s3", "gs", "gcs", "az", "abfs")


@dataclass(frozen=True)
class ModelsSection:
    # Diffusers pipeline: "embedded:tiny-sd", a local folder, or a hub id (offline cache).
    diffusion: str = "embedded:tiny-sd"
    diffusion_revision: str | None = None
    scheduler: str | None = None
    # open_clip: an architecture name plus a weights file (or an embedded name).
    clip: str = "embedded:tiny-clip"
    clip_pretrained: str | None = None
    # transformers image classifier for image moderation.
    moderation: str = "embedded:tiny-nsfw"
    unsafe_labels: tuple[str, ...] = ("nsfw",)
    # Optional transformers text classifier for prompt moderation.
    prompt_classifier: str | None = None
    device: str = "auto"  # auto | cpu | cuda | cuda:N | mps
    dtype: str = "auto"  # auto | float32 | float16 | bfloat16
    # Throughput options, mostly for GPUs (see bench/RESULTS.md); off by default.
    channels_last: bool = False
    compile: bool = False  # torch.compile of the UNet/transformer: slow first batch of each shape
    vae_slicing: bool = False  # decode a batch one image at a time: less memory for large batches
    vae_tiling: bool = False  # decode in tiles: large images in less memory


@dataclass(frozen=True)
class GenerateSection:
    steps: int = 4
    guidance_scale: float = 5.0
    width: int = 64
    height: int = 64
    strength: float = 0.75  # image-to-image: how far from the product photo to move
    # Background staging (inpaint): 1.0 generates the background from noise; lower keeps some
    # of the neutral placeholder behind the product. A row or style `strength` overrides both.
    inpaint_strength: float = 1.0
    # A reviewer's `refine` without a strength: how far the new image moves from the chosen one.
    refine_strength: float = 0.5
    batch_size: int = 4


@dataclass(frozen=True)
class FilterSection:
    clip_threshold: float = 0.0
    image_unsafe_threshold: float = 0.5
    prompt_unsafe_threshold: float = 0.5
    blocked_terms: tuple[str, ...] = ()


@dataclass(frozen=True)
class OutputSection:
    format: str = "png"  # png | jpeg | webp
    png_compress_level: int = 1
    jpeg_quality: int = 92
    webp_quality: int = 90
    write_rejected: bool = False
    shard_rows: int = 256


@dataclass(frozen=True)
class SignerSection:
    # demo: a throwaway CA + signer made in the output folder. files: real keys.
    mode: str = "demo"
    cert_chain: str | None = None  # PEM file: end-entity first, then intermediates
    private_key: str | None = None  # PEM file
    cert_chain_env: str | None = None  # or: environment variables holding the PEM text
    private_key_env: str | None = None
    trust_anchors: str | None = None  # PEM file of CAs to trust when verifying
    tsa_url: str | None = None
    thumbnail: bool = False
    algorithm: str = "es256"


@dataclass(frozen=True)
class ClusterSection:
    address: str | None = None  # None: start a local Ray instance
    generate_actors: int = 0  # 0: one per GPU, or 1 on a CPU-only cluster
    gpus_per_actor: float = 1.0
    cpus_per_actor: float = 0.5
    # 0: sized from the spare CPUs on GPU clusters; none on CPU-only runs using every core
    # (the generate actor writes its own images there).
    write_actors: int = 0
    # Torch threads of a generate actor on CPU; 0: every core of its node (Ray would give a
    # fractional-CPU actor one thread, halving CPU generation on a small machine).
    torch_threads: int = 0
    cpus_per_writer: float = 0.5


@dataclass(frozen=True)
class Throughput:
    """Measured model-actor seconds per image of one model and shape at `steps` denoising steps;
    other step counts scale linearly."""

    model: str
    width: int
    height: int
    steps: int
    seconds_per_image: float


@dataclass(frozen=True)
class CostSection:
    gpu_hour_usd: float | None = None  # the price of a GPU-hour; None: no money figures
    gpus: int = 0  # GPUs the estimate assumes; 0: [cluster].generate_actors * gpus_per_actor, else 1
    throughput: tuple[Throughput, ...] = ()  # [[cost.throughput]] tables

    def gpu_count(self, cluster: ClusterSection) -> float:
        if self.gpus:
            return self.gpus
        return cluster.generate_actors * cluster.gpus_per_actor if cluster.generate_actors else 1


@dataclass(frozen=True)
class JobConfig:
    job: JobSection = field(default_factory=JobSection)
    models: ModelsSection = field(default_factory=ModelsSection)
    generate: GenerateSection = field(default_factory=GenerateSection)
    filter: FilterSection = field(default_factory=FilterSection)
    output: OutputSection = field(default_factory=OutputSection)
    signer: SignerSection = field(default_factory=SignerSection)
    cluster: ClusterSection = field(default_factory=ClusterSection)
    cost: CostSection | None = None  # None: no [cost] section, no estimate
    source: str = ""  # the job file this came from

    def replace(self, section: str, **changes: Any) -> JobConfig:
        """A copy with some keys of one section changed (CLI overrides)."""
        new = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **{section: new})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


_SECTION_TYPES = {
    "job": JobSection,
    "models": ModelsSection,
    "generate": GenerateSection,
    "filter": FilterSection,
    "output": OutputSection,
    "signer": SignerSection,
    "cluster": ClusterSection,
    "cost": CostSection,
}
_SECTIONS = tuple(_SECTION_TYPES)
# Keys holding paths that resolve against the job file's folder.
_PATH_KEYS = {
    ("job", "manifest"),
    ("job", "styles"),
    ("job", "output"),
    ("job", "allowed_input_roots"),
    ("signer", "cert_chain"),
    ("signer", "private_key"),
    ("signer", "trust_anchors"),
}
# Keys holding a model spec: a local path, or a name that is not one (embedded:, a hub id, a tag).
_MODEL_KEYS = {
    ("models", "diffusion"),
    ("models", "clip"),
    ("models", "clip_pretrained"),
    ("models", "moderation"),
    ("models", "prompt_classifier"),
}
# Model specs whose rest is always a local path (a moderation head file, an open_clip folder).
_PATH_PREFIXES = ("clip-head:", "local-dir:")
# 'name:' before anything else (s3://, embedded:, hf-hub:); two letters at least, so not C:\.
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]+:")


def nearest(name: str, known: list[str]) -> str | None:
    """The known name `name` is most likely a misspelling of, or None."""
    close = difflib.get_close_matches(name, known, n=1)
    return close[0] if close else None


def suggest(name: str, known: list[str], show=repr, limit: int = 12) -> str:
    """'did you mean X?' for the nearest known name, else the known names (at most `limit`), so
    an error says what is allowed, not only what is wrong."""
    close = nearest(name, known)
    if close is not None:
        return f"did you mean {show(close)}?"
    shown = ", ".join(show(k) for k in known[:limit])
    return f"known: {shown}" + (f", ... ({len(known)} in all)" if len(known) > limit else "")


def _is_local_path(value: str) -> bool:
    return "://" not in value and not value.startswith(EMBEDDED_PREFIX)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except (OSError, ValueError):
        return False


def _exists(path: Path) -> bool:
    """Whether something is at `path`; a name the system cannot look up (too long) is not."""
    try:
        return path.exists()
    except (OSError, ValueError):
        return False


def resolve_path(value: str, base: Path) -> str:
    """A relative local path resolved against `base`; URIs and absolute paths unchanged."""
    if not value or not _is_local_path(value):
        return value
    p = Path(os.path.expanduser(value))
    return str(p if p.is_absolute() else (base / p).resolve())


def resolve_model(value: str, base: Path) -> str:
    """A model spec with its local path resolved against `base`; names pass unchanged.

    'org/name' may be a hub id or a folder, so a relative spec is a path when it says so ('./',
    '../', '~') or when it exists under `base`; anything else (a hub id, an open_clip tag or
    architecture) is left for the loader, as are embedded: names and URIs.
    """
    prefix = next((p for p in _PATH_PREFIXES if value.startswith(p)), None)
    if prefix:
        return prefix + resolve_path(value.removeprefix(prefix), base)
    if _SCHEME.match(value):
        return value
    says_path = value.startswith(("./", "../", "~")) or value in (".", "..")
    return resolve_path(value, base) if says_path or _exists(base / value) else value


def _resolve(where: str, section: str, key: str, value: Any, base: Path) -> Any:
    """A key's value with its paths resolved against `base` (one string or a list of them)."""
    if isinstance(value, tuple):
        return tuple(_resolve(where, section, key, v, base) for v in value)
    if not isinstance(value, str):
        return value
    if "\x00" in value and (section, key) in _PATH_KEYS | _MODEL_KEYS:
        raise ConfigError(f"{where}: a path or model name cannot hold a NUL byte, got {show(value)}")
    if (section, key) in _PATH_KEYS:
        return resolve_path(value, base)
    return resolve_model(value, base) if (section, key) in _MODEL_KEYS else value


def _coerce(where: str, value: Any, annotation: str) -> Any:
    """Check one TOML value against the dataclass annotation (as a string)."""
    optional = "None" in annotation
    if value is None and optional:
        return None
    base = annotation.replace(" | None", "")
    if base == "bool":
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {show(value)}")
        return value
    if base == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {show(value)}")
        return value
    if base == "float":
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {show(value)}")
        if not math.isfinite(value):  # nan and inf pass some ranges (> 0) and break what divides by them
            raise ConfigError(f"{where}: expected a finite number, got {show(value)}")
        return float(value)
    if base == "str":
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {show(value)}")
        return value
    if base.startswith("tuple[str"):
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{where}: expected a list of strings, got {show(value)}")
        return tuple(value)
    raise AssertionError(f"unhandled annotation {annotation}")


def _build_section(name: str, raw: Any, base: Path, source: str, problems: list[str]) -> Any:
    """One section's dataclass from its table; what is wrong with it goes to `problems`, every key
    (a key that is wrong is left at its default, so the others are still checked)."""
    cls = _SECTION_TYPES[name]
    if not isinstance(raw, dict):
        problems.append(f"{source}: [{name}] must be a table")
        return cls()
    known = {f.name: f for f in fields(cls)}
    values = {}
    for key, value in raw.items():
        where = f"{source}: [{name}].{key}"
        if key not in known:
            problems.append(f"{source}: unknown key {key!r} in [{name}] ({suggest(key, sorted(known))})")
            continue
        try:
            if (name, key) == ("cost", "throughput"):
                values[key] = _throughput(where, value, base, source)
            else:
                values[key] = _resolve(where, name, key, _coerce(where, value, str(known[key].type)), base)
        except ConfigError as e:
            problems.append(str(e))
    return cls(**values)


MAX_PROBLEMS = 50  # a job file's problems named at once (then a count), as a manifest's


def _refuse(problems: list[str]) -> None:
    """ConfigError naming every problem, a line each (at most MAX_PROBLEMS, then a count)."""
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise ConfigError("\n".join(problems[:MAX_PROBLEMS]) + (f"\n... and {more} more" if more > 0 else ""))


def _throughput(where: str, raw: Any, base: Path, source: str) -> tuple[Throughput, ...]:
    """[[cost.throughput]] tables: every key required, the model resolved like [models].diffusion."""
    if not isinstance(raw, list) or not all(isinstance(t, dict) for t in raw):
        raise ConfigError(f"{where}: expected [[cost.throughput]] tables, got {show(raw)}")
    known = {f.name: f for f in fields(Throughput)}
    out = []
    for i, table in enumerate(raw):
        here = f"{source}: [[cost.throughput]] #{i + 1}"
        unknown = [k for k in table if k not in known]
        if unknown:
            raise ConfigError(f"{here}: unknown key {unknown[0]!r} ({suggest(unknown[0], sorted(known))})")
        missing = [k for k in known if k not in table]
        if missing:
            raise ConfigError(f"{here}: {', '.join(missing)} required")
        values = {k: _coerce(f"{here}.{k}", v, str(known[k].type)) for k, v in table.items()}
        values["model"] = resolve_model(values["model"], base)
        out.append(Throughput(**values))
    return tuple(out)


def _limited(cfg: JobConfig) -> list[tuple[str, Any, Limit]]:
    """(key, value, limit) of every job-spec key that the table of limits bounds."""
    j, g, f, o, c = cfg.job, cfg.generate, cfg.filter, cfg.output, cfg.cluster
    return [
        ("[job].seed", j.seed, LIMITS["seed"]),
        ("[job].num_candidates", j.num_candidates, LIMITS["num_candidates"]),
        ("[job].max_failed_fraction", j.max_failed_fraction, LIMITS["fraction"]),
        ("[job].max_prompt_chars", j.max_prompt_chars, LIMITS["at_least_one"]),
        ("[generate].steps", g.steps, LIMITS["steps"]),
        ("[generate].guidance_scale", g.guidance_scale, LIMITS["guidance_scale"]),
        ("[generate].strength", g.strength, LIMITS["strength"]),
        ("[generate].inpaint_strength", g.inpaint_strength, LIMITS["strength"]),
        ("[generate].refine_strength", g.refine_strength, LIMITS["strength"]),
        ("[generate].width", g.width, LIMITS["size"]),
        ("[generate].height", g.height, LIMITS["size"]),
        ("[generate].batch_size", g.batch_size, LIMITS["at_least_one"]),
        ("[filter].clip_threshold", f.clip_threshold, LIMITS["clip_threshold"]),
        ("[filter].image_unsafe_threshold", f.image_unsafe_threshold, LIMITS["unsafe_threshold"]),
        ("[filter].prompt_unsafe_threshold", f.prompt_unsafe_threshold, LIMITS["unsafe_threshold"]),
        ("[output].png_compress_level", o.png_compress_level, LIMITS["png_compress_level"]),
        ("[output].jpeg_quality", o.jpeg_quality, LIMITS["quality"]),
        ("[output].webp_quality", o.webp_quality, LIMITS["quality"]),
        ("[output].shard_rows", o.shard_rows, LIMITS["at_least_one"]),
        ("[cluster].gpus_per_actor", c.gpus_per_actor, LIMITS["resources"]),
        ("[cluster].cpus_per_actor", c.cpus_per_actor, LIMITS["resources"]),
        ("[cluster].cpus_per_writer", c.cpus_per_writer, LIMITS["resources"]),
        ("[cluster].generate_actors", c.generate_actors, LIMITS["count"]),
        ("[cluster].write_actors", c.write_actors, LIMITS["count"]),
        ("[cluster].torch_threads", c.torch_threads, LIMITS["count"]),
        *_cost_limited(cfg.cost),
    ]


def _cost_limited(cost: CostSection | None) -> list[tuple[str, Any, Limit]]:
    if cost is None:
        return []
    found = [("[cost].gpus", cost.gpus, LIMITS["count"])]
    if cost.gpu_hour_usd is not None:
        found.append(("[cost].gpu_hour_usd", cost.gpu_hour_usd, LIMITS["price"]))
    for i, t in enumerate(cost.throughput, 1):
        found += [(f"[[cost.throughput]] #{i}.width", t.width, LIMITS["size"]),
                  (f"[[cost.throughput]] #{i}.height", t.height, LIMITS["size"]),
                  (f"[[cost.throughput]] #{i}.steps", t.steps, LIMITS["steps"]),
                  (f"[[cost.throughput]] #{i}.seconds_per_image", t.seconds_per_image, LIMITS["seconds"])]
    return found


def _value_problems(cfg: JobConfig) -> Iterator[str]:
    """What is wrong with the values, each naming the key, the value and what is allowed."""
    for key, value, limit in _limited(cfg):
        if not limit.allows(value):
            yield f"{key} must be {limit}, got {show(value)}"
    for key, value, allowed in (("[output].format", cfg.output.format, CHOICES["format"]),
                                ("[signer].mode", cfg.signer.mode, CHOICES["mode"]),
                                ("[signer].algorithm", cfg.signer.algorithm, CHOICES["algorithm"]),
                                ("[models].dtype", cfg.models.dtype, CHOICES["dtype"])):
        if value not in allowed:
            close = nearest(value.lower(), list(allowed))
            yield (f"{key} must be one of {', '.join(allowed)}, got {show(value)}"
                   + (f" (did you mean {close!r}?)" if close else ""))
    yield from _embedded_problems(cfg.models)
    if not DEVICE.fullmatch(cfg.models.device):
        yield f"[models].device must be auto, cpu, mps, cuda or cuda:N, got {show(cfg.models.device)}"
    if not 1 <= cfg.job.keep <= cfg.job.num_candidates:
        yield f"[job].keep must be 1..num_candidates ({cfg.job.num_candidates}), got {cfg.job.keep}"


def _embedded_problems(models: ModelsSection) -> Iterator[str]:
    """An `embedded:` model spec must name an embedded model made for its key (tokens, the
    fingerprint and the loaders look the name up and would fail far from the job file)."""
    from pipeline.models.embedded import ROLES

    def named(n: str) -> str:
        return EMBEDDED_PREFIX + n

    for key in ("diffusion", "clip", "moderation", "prompt_classifier"):
        spec = getattr(models, key)
        if not spec or not spec.startswith(EMBEDDED_PREFIX):
            continue
        name = spec.removeprefix(EMBEDDED_PREFIX)
        if ROLES.get(name) == key:
            continue
        fits = [n for n, role in ROLES.items() if role == key]
        if not fits:
            known = f"there is no embedded {key} model: give a local folder or a hub id"
        elif name in ROLES:
            known = f"known: {', '.join(map(named, fits))}"
        else:
            known = suggest(name, fits, show=lambda n: repr(named(n)))
        what = (f"{named(name)} is the embedded {ROLES[name]} model, not a {key} model" if name in ROLES
                else f"unknown embedded model {name!r}")
        yield f"[models].{key}: {what} ({known})"


def _check_ranges(cfg: JobConfig) -> None:
    src = cfg.source
    problems = [f"{src}: {problem}" for problem in _value_problems(cfg)]
    if not cfg.job.manifest:
        problems.append(f"{src}: [job].manifest is required (or pass --manifest)")
    if cfg.signer.mode == "files":
        for what in ("cert_chain", "private_key"):
            path = getattr(cfg.signer, what)
            env = getattr(cfg.signer, f"{what}_env")
            if not path and not env:
                problems.append(f"{src}: [signer].{what} or [signer].{what}_env is required when mode = 'files'")
            elif path and not _is_file(Path(path)):
                problems.append(f"{src}: [signer].{what}: file not found: {path}")
            elif not path and env and env not in os.environ:
                problems.append(f"{src}: [signer].{what}_env: environment variable {env} is not set")
    _refuse(problems)


def parse_job(data: dict[str, Any], *, base: Path, source: str) -> JobConfig:
    """The job spec of a parsed job file, or ConfigError naming every unknown section and key and
    every value of the wrong type."""
    problems = [f"{source}: unknown section [{s}] ({suggest(s, list(_SECTIONS), '[{}]'.format)})"
                for s in data if s not in _SECTIONS]
    sections = {name: _build_section(name, raw, base, source, problems) for name, raw in data.items()
                if name in _SECTIONS}
    _refuse(problems)
    return JobConfig(**sections, source=source)


# Byte-order marks of the encodings a job file is sometimes saved in by mistake.
_BOMS = ((b"\x00\x00\xfe\xff", "UTF-32"), (b"\xff\xfe\x00\x00", "UTF-32"), (b"\xfe\xff", "UTF-16"),
         (b"\xff\xfe", "UTF-16"))
_UTF8_BOM = b"\xef\xbb\xbf"


def read_job_file(path: str | os.PathLike) -> str:
    """The text of a job file, or ConfigError naming the file and what is wrong with it.

    The one way a job file is read: as every input is (`uris.read_bytes`: a regular file only,
    opened without blocking, so a folder, a FIFO or a device is refused and nothing waits on a
    writer; at most `LIMITS["job_bytes"]`), then decoded as UTF-8 (a UTF-8 byte-order mark, as
    some editors save, is dropped).
    """
    from pipeline.storage import uris  # uris reads its limits from this module

    source = os.fspath(path)
    if not source:
        raise ConfigError("the job file path is empty: name a job file (jobs/*.toml)")
    try:
        data = uris.read_bytes(source, "job_bytes")
    except (FileNotFoundError, NotADirectoryError):
        raise ConfigError(f"{source}: job file not found") from None
    except Refused as e:
        raise ConfigError(f"{e}: a job file must be a regular file") from None
    except OSError as e:
        raise ConfigError(f"{source}: cannot read the job file: {e.strerror or e}") from None
    except ValueError as e:  # a NUL byte in the path, a file:// URI on another host
        raise ConfigError(f"{show(source)}: not a usable path ({e})") from None
    return _decode(data, source)


def _decode(data: bytes, source: str) -> str:
    """A job file's bytes as text: UTF-8, or ConfigError saying where it is not and what to do."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            raise ConfigError(f"{source}: the job file is {encoding} (it starts with a {encoding} byte-order "
                              "mark); save it as UTF-8")
    data = data.removeprefix(_UTF8_BOM)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise ConfigError(f"{source}: not UTF-8: byte 0x{data[e.start]:02x} at offset {e.start} (line {line}) "
                          "cannot be decoded; save the job file as UTF-8") from None
    if (nul := data.find(b"\x00")) >= 0:
        line = data.count(b"\n", 0, nul) + 1
        raise ConfigError(f"{source}: a NUL byte at offset {nul} (line {line}): not a text file, or UTF-16 "
                          "without a byte-order mark; save the job file as UTF-8")
    return text


def load_job(path: str | os.PathLike, overrides: dict[tuple[str, str], Any] | None = None) -> JobConfig:
    """Read and validate a job file; `overrides` map (section, key) → value (CLI flags)."""
    text = read_job_file(path)
    path = Path(path)
    source = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{source}: not valid TOML: {e}") from None
    except RecursionError:
        raise ConfigError(f"{source}: not valid TOML: arrays or inline tables nested too deep") from None
    cfg = parse_job(data, base=path.resolve().parent, source=source)
    cwd = Path.cwd()
    for (section, key), value in (overrides or {}).items():
        if value is not None:
            cfg = cfg.replace(section, **{key: _resolve(f"{source}: [{section}].{key} (from the command line)",
                                                        section, key, value, cwd)})
    _check_ranges(cfg)
    return cfg
