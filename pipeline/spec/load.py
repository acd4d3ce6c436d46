"""A job file → `JobConfig`: every section and key checked against its type, paths and model specs
resolved against the job file's folder, CLI overrides applied, then the values checked.

Every problem is named at once (capped), each by file, key and value, with what is allowed and
the nearest known name for a misspelt key or section.
"""

from __future__ import annotations

import math
import os
import tomllib
from dataclasses import fields
from pathlib import Path
from typing import Any

from pipeline.errors import ConfigError, show
from pipeline.spec.config import SECTION_TYPES, JobConfig, Throughput
from pipeline.spec.job_checks import job_problems
from pipeline.spec.job_file import read_job_file
from pipeline.spec.suggest import suggest
from pipeline.storage.paths import resolve_key, resolve_model

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
    ("models", "ip_adapter"),
    ("models", "controlnet"),
}


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
    _refuse(job_problems(cfg))
    return cfg


def parse_job(data: dict[str, Any], *, base: Path, source: str) -> JobConfig:
    """The job spec of a parsed job file, or ConfigError naming every unknown section and key and
    every value of the wrong type."""
    problems = [f"{source}: unknown section [{s}] ({suggest(s, list(SECTION_TYPES), '[{}]'.format)})"
                for s in data if s not in SECTION_TYPES]
    sections = {name: _build_section(name, raw, base, source, problems) for name, raw in data.items()
                if name in SECTION_TYPES}
    _refuse(problems)
    return JobConfig(**sections, source=source)


def _build_section(name: str, raw: Any, base: Path, source: str, problems: list[str]) -> Any:
    """One section's dataclass from its table; what is wrong with it goes to `problems`, every key
    (a key that is wrong is left at its default, so the others are still checked)."""
    cls = SECTION_TYPES[name]
    if not isinstance(raw, dict):
        problems.append(f"{source}: [{name}] must be a table")
        return cls()
    known = {f.metadata.get("key", f.name): f for f in fields(cls)}  # a key a Python name cannot spell: `from`
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
                values[known[key].name] = _resolve(where, name, key, _coerce(where, value, str(known[key].type)), base)
        except ConfigError as e:
            problems.append(str(e))
    return cls(**values)


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


def _resolve(where: str, section: str, key: str, value: Any, base: Path) -> Any:
    """A key's value with its paths resolved against `base` (one string or a list of them)."""
    if isinstance(value, tuple):
        return tuple(_resolve(where, section, key, v, base) for v in value)
    if not isinstance(value, str):
        return value
    if "\x00" in value and (section, key) in _PATH_KEYS | _MODEL_KEYS:
        raise ConfigError(f"{where}: a path or model name cannot hold a NUL byte, got {show(value)}")
    if (section, key) in _PATH_KEYS:
        return resolve_key(value, base)
    return resolve_model(value, base) if (section, key) in _MODEL_KEYS else value


MAX_PROBLEMS = 50  # a job file's problems named at once (then a count), as a manifest's


def _refuse(problems: list[str]) -> None:
    """ConfigError naming every problem, a line each (at most MAX_PROBLEMS, then a count)."""
    if problems:
        more = len(problems) - MAX_PROBLEMS
        raise ConfigError("\n".join(problems[:MAX_PROBLEMS]) + (f"\n... and {more} more" if more > 0 else ""))
