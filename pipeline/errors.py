"""The pipeline's errors, one family, and the exit codes they end a command with.

Every error a user can cause or fix (a job spec, an input, a model, a signer, the storage, the job
as a whole) is a `PipelineError` that carries its exit code, so the command line maps each to its
code in one place and any module can raise one without importing the module above it (the
runner raises `JobError` without importing the job). A message names the file, key, row or
variable, and what to do; never a secret.

Exit codes (scheduled jobs rely on them): 0 ok; 1 invalid job, input, model, signer or a failed
verification; 2 the run stopped early (error budget, its output lost to another run) or left
candidates pending.

Imports nothing of the pipeline: every module may import it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

EXIT_OK, EXIT_INVALID, EXIT_INCOMPLETE = 0, 1, 2
MAX_REPORTED = 50  # problems an input error lists; the rest are counted


class PipelineError(Exception):
    """An error the command line reports as one message (no traceback), exiting `exit_code`."""

    exit_code = EXIT_INVALID


def show(value: Any, limit: int = 40) -> str:
    """A value as an error message quotes it: its repr, shortened, so a message names the value
    without pasting a whole prompt."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ── config ──────────────────────────────────────────────────────────────────
class ConfigError(PipelineError, ValueError):
    """A job spec that cannot run; the message names the file and the key."""


# ── input ───────────────────────────────────────────────────────────────────
@dataclass(frozen=True)
class Problem:
    """One thing wrong with an input table (a manifest, styles, decisions): where, and what."""

    file: str
    message: str
    row: int | None = None  # 0-based row number
    id: str | None = None
    column: str | None = None

    def __str__(self) -> str:
        where = [self.file]
        if self.row is not None:
            where.append(f"row {self.row}" + (f" (id {show(self.id)})" if self.id is not None else ""))
        if self.column:
            where.append(f"column {self.column!r}")
        return ": ".join([", ".join(where), self.message])


class ManifestError(PipelineError, ValueError):
    """The input cannot run. Holds every problem found, not only the first."""

    def __init__(self, problems: list[Problem], total: int | None = None):
        self.problems = problems
        self.total = total if total is not None else len(problems)
        lines = [str(p) for p in problems[:MAX_REPORTED]]
        if self.total > len(lines):
            lines.append(f"... and {self.total - len(lines)} more problem(s)")
        super().__init__("\n".join(lines))


class Refused(OSError):
    """An input that is not read: not a regular file or object (a device, a pipe, a folder), or
    larger than its limit. The message names it and says which. (Reported as a `Problem`.)"""


def refusal(e: Exception, uri: str, what: str, kind: str) -> str:
    """Why an input cannot be read, in the same words for every input (a manifest or styles
    table, a product photo, a mask, a reference image, a LoRA, a decisions file): missing,
    refused (not a regular file or object, over its size limit, a scheme no storage answers
    to), not what it should be, or out of reach (credentials, network)."""
    if isinstance(e, FileNotFoundError):
        return f"{what} not found: {uri}"
    if isinstance(e, Refused | StorageError):
        return f"{what} cannot be read: {e}"
    if isinstance(e, OSError | ValueError | SyntaxError):  # decoders: PIL, Arrow (ArrowInvalid is a ValueError)
        return f"not a readable {kind}: {uri} ({type(e).__name__}: {_short(e)})"
    return f"{what} cannot be read: {uri} ({type(e).__name__}: {_short(e)})"


def _short(e: Exception, limit: int = 160) -> str:
    text = " ".join(str(e).split())
    return text if len(text) <= limit else text[:limit - 3] + "..."


# ── models ──────────────────────────────────────────────────────────────────
class ModelLoadError(PipelineError, RuntimeError):
    """A model that cannot be loaded; the message names the spec and what was tried."""


# ── signer ──────────────────────────────────────────────────────────────────
class SignerError(PipelineError, RuntimeError):
    """A signer that cannot sign; the message names the file or variable, never its contents."""


# ── storage ─────────────────────────────────────────────────────────────────
class StorageError(PipelineError, RuntimeError):
    """A storage scheme this installation cannot reach (its fsspec driver is missing)."""


class OutputLocked(PipelineError, RuntimeError):
    """Another run holds the output."""


class LockLost(PipelineError, RuntimeError):
    """This run no longer holds its output: another run took it over (or the store could not
    confirm, with the lease run out). Nothing more may be committed; the run exits 2."""

    exit_code = EXIT_INCOMPLETE

    def __init__(self, message: str, holder: dict | None = None):
        super().__init__(message)
        self.holder = holder  # the lock object's owner now, None when it is gone


# ── job ─────────────────────────────────────────────────────────────────────
class JobError(PipelineError, RuntimeError):
    """The job cannot start or must stop (output folder, signer, error budget)."""
