"""Units of work through stages, without Ray: what the job hands the runner, and the chain of
stages an actor (or the driver, in-process) applies to each unit.

The job builds `Stages`: a `Factory` per stage (how to build it on an actor, and the reason code
its failures go under) and `failed`, which turns a unit that failed whole into error rows. The
runner (run/runner.py) places them on Ray actors and knows no stage by name; `execute_in_process`
runs the same chain in this process, for debugging and fast tests.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pyarrow as pa

Stage = Callable[[pa.Table], pa.Table]  # a unit of work in, its records or outcomes out


@dataclass(frozen=True)
class Factory:
    """How one stage is built on an actor (once: its models load there), and the reason code
    its failures are reported under (`<code>: <message>`). `build` travels to the actors: a
    class and its arguments (`functools.partial`), never key material."""

    code: str
    build: Callable[[], Stage]


@dataclass(frozen=True)
class Stages:
    """What the runner places on its actors, and what becomes of a unit that failed whole:
    `failed(unit, code, message)` returns its error rows (on the driver). `generate_for(models)`
    is the generate stage of an actor that holds these models (indices into the work index's);
    `generate` holds them all."""

    generate_for: Callable[[list[int]], Factory]
    write: Factory
    failed: Callable[[pa.Table, str, str], pa.Table]
    models: int = 1  # how many models the units need

    @property
    def generate(self) -> Factory:
        return self.generate_for(list(range(self.models)))


class StageFailed(Exception):
    """A stage raised on a unit: the stage's reason code, and the error as its traceback's last line."""

    def __init__(self, code: str, message: str):
        super().__init__(code, message)
        self.code, self.message = code, message


class Chain:
    """Stages built once (models load here), then applied in turn to each unit of work; the
    stage that raises is named (StageFailed)."""

    def __init__(self, factories: list[Factory]):
        self.stages = [(f.code, f.build()) for f in factories]

    def run(self, table: pa.Table) -> pa.Table:
        for code, stage in self.stages:
            try:
                table = stage(table)
            except Exception as e:  # noqa: BLE001 — named by its stage; the driver makes it error rows
                raise StageFailed(code, one_line(traceback.format_exception_only(e))) from e
        return table


def one_line(lines: list[str]) -> str:
    """An error's lines as one line of a reason, at most 500 characters."""
    return " ".join(line.strip() for line in lines if line.strip())[:500]


def execute_in_process(work_path: str, stages: Stages,
                       fence: Callable[[], None] = lambda: None) -> Iterator[pa.Table]:
    """The runner's stream without Ray: each unit through both stages in turn, here. `fence`
    runs before each unit; a unit that fails is error rows, and the run goes on (as on Ray)."""
    from pipeline.plan.work import WorkFile

    both = Chain([stages.generate, stages.write])
    work = WorkFile(work_path)
    try:
        for unit in work:
            fence()
            try:
                outcome = both.run(unit)
            except StageFailed as e:
                outcome = stages.failed(unit, e.code, f"unit failed: {e.message}")
            yield outcome
    finally:
        work.close()
