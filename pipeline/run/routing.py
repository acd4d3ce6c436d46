"""How many actors a run gets, which generate actor holds which model, and which unit an actor
gets next.

Pool sizes come from the job's [cluster] section and the cluster's resources, never a fixed
count: on 2 cores an actor that asked for a whole CPU would starve everything else.

A job whose styles name their own models has units of several models (each unit holds one:
plan/work.py). Pools are sized by each model's share of the planned work (`WorkIndex.weight`),
with at least one actor per model; with fewer actors than models, an actor holds several and
takes their units a model at a time, so it switches each model once (its models stay loaded up
to `[cluster].models_per_actor`, the least recently used dropped past that). Ray-free: the runner
asks, this answers.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass

from pipeline.plan.work import UnitModels
from pipeline.spec.config import JobConfig


@dataclass(frozen=True)
class Pools:
    generate_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    write_actors: int  # 0: the generate actors write their own units
    cpus_per_writer: float


def size_pools(cfg: JobConfig, resources: dict[str, float]) -> Pools:
    """Actor counts from the job's [cluster] section and what the cluster has."""
    c = cfg.cluster
    gpus = resources.get("GPU", 0.0)
    cpus = resources.get("CPU", 1.0)
    on_gpu = gpus > 0 and cfg.models.device != "cpu"
    gpus_per_actor = c.gpus_per_actor if on_gpu else 0.0
    generate = c.generate_actors or (max(1, int(gpus // gpus_per_actor)) if on_gpu else 1)
    spare = cpus - generate * c.cpus_per_actor
    # A CPU generate actor that uses every core of its node leaves nothing for writers to run
    # on: a writer beside it only preempts its threads mid-step. It writes its own units then,
    # between batches (measured on 2 cores: bench/RESULTS.md).
    all_cores = not on_gpu and c.torch_threads == 0
    write = c.write_actors or (0 if all_cores else max(1, min(32, int(spare))))
    return Pools(generate, gpus_per_actor, c.cpus_per_actor, write, c.cpus_per_writer)


def assign(actors: int, weights: list[float]) -> list[list[int]]:
    """The models (indices into `weights`) each of `actors` actors holds.

    At least as many actors as models: each model gets one actor, and the rest are shared out
    by weight (largest remainder; ties to the earlier model). Fewer: each actor holds several,
    the heaviest model first going to the least-loaded actor."""
    models = len(weights)
    if models == 0:
        return [[] for _ in range(actors)]
    if actors >= models:
        extra = actors - models
        total = sum(weights)
        shares = [w / total for w in weights] if total > 0 else [1 / models] * models
        quotas = [extra * share for share in shares]
        counts = [1 + int(q) for q in quotas]
        by_remainder = sorted(range(models), key=lambda i: (-(quotas[i] - int(quotas[i])), i))
        for i in by_remainder[:actors - sum(counts)]:
            counts[i] += 1
        return [[m] for m in range(models) for _ in range(counts[m])]
    held: list[list[int]] = [[] for _ in range(actors)]
    load = [0.0] * actors
    for m in sorted(range(models), key=lambda i: (-weights[i], i)):
        a = min(range(actors), key=lambda i: (load[i], i))
        held[a].append(m)
        load[a] += weights[m]
    for models_of in held:
        models_of.sort()  # in the work file's order: the first model's units come first
    return held


class Router:
    """The units still to hand out, by model, and each actor's next one: a unit of the model it
    took last while there are any, else of its next model that has units left.

    A model's units left are its runs (plan/work.py: UnitModels) as ranges, the first one cut
    short as each unit goes out: a few ranges a plan chunk, never a queue of unit numbers, so
    the driver's memory stays flat however many units a run has."""

    def __init__(self, unit_model: UnitModels | Sequence[int], held: list[list[int]]):
        self.units = unit_model if isinstance(unit_model, UnitModels) else UnitModels.of(unit_model)
        self.held = held
        self.todo: dict[int, deque[range]] = {}  # per model: its runs left, none empty, in unit order
        for model, units in self.units.runs():
            self.todo.setdefault(model, deque()).append(units)
        self._left = len(self.units)
        self.current: list[int | None] = [None] * len(held)
        unheld = set(self.todo) - {m for models in held for m in models}
        if unheld:
            raise ValueError(f"no actor holds model(s) {sorted(unheld)}")

    def left(self) -> int:
        return self._left

    def next_for(self, actor: int) -> int | None:
        """The unit `actor` takes next, or None when none of its models has units left."""
        order = self.held[actor]
        if self.current[actor] in order:
            start = order.index(self.current[actor])
            order = order[start:] + order[:start]
        for model in order:
            if runs := self.todo.get(model):
                self.current[actor] = model
                unit, rest = runs[0].start, runs[0][1:]
                if rest:
                    runs[0] = rest
                else:
                    runs.popleft()
                self._left -= 1
                return unit
        return None

    def has_for(self, actor: int) -> bool:
        """Whether any model `actor` holds has units left."""
        return any(self.todo.get(m) for m in self.held[actor])

    def holders(self, model: int) -> list[int]:
        """The actors that hold `model`."""
        return [a for a, models in enumerate(self.held) if model in models]

    def holders_of(self, unit: int) -> list[int]:
        """The actors that hold the model `unit` needs."""
        return self.holders(self.units[unit])
