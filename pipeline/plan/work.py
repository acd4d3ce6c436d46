"""Pending work on disk: one record per manifest row, its candidates nested as a list.

Selection (best k of N) needs all candidates of a row in one batch. Nesting them makes that
true by construction, and one row group is one unit of work (about a generation batch of
candidates). The driver writes the file once per run, a chunk of the plan at a time, and reads
one unit as it hands it to an actor, so neither the driver nor the object store holds the whole
plan while a large run streams through.

The file is Arrow IPC, one record batch per unit: its footer lists only where each batch
starts, and a unit is read straight from a memory map. (A Parquet work file's footer took about
60 kB of column metadata per row group: 1.2 GB of driver memory and 12 s at 10,000 units.)
"""

from __future__ import annotations

from array import array
from bisect import bisect_right
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.plan.models import ModelRef, ModelUse
from pipeline.spec import schema

# A candidate as the stages see it: its plan, its outcome so far (null for a new one), and
# whether an earlier run judged it (then it is ranked with the others, never measured again).
PRIOR = "prior"
CANDIDATE_FIELDS = schema.PLAN_FIELDS + schema.OUTCOME_FIELDS + [pa.field(PRIOR, pa.bool_())]
CANDIDATE_SCHEMA = pa.schema(CANDIDATE_FIELDS)
WORK_SCHEMA = pa.schema([pa.field("id", pa.string()),
                         pa.field("candidates", pa.list_(pa.struct(CANDIDATE_FIELDS)))])
MAX_GROUPS = 10_000


def candidates(pending: pa.Table, priors: pa.Table | None = None) -> pa.Table:
    """Pending plan rows (outcomes null) and earlier judged ones (plan + committed outcome),
    as one table of CANDIDATE_SCHEMA ordered by manifest row, then candidate."""
    new = pending.select([f.name for f in schema.PLAN_FIELDS])
    for f in schema.OUTCOME_FIELDS:
        new = new.append_column(f, pa.nulls(new.num_rows, f.type))
    new = new.append_column(PRIOR, pa.array([False] * new.num_rows, pa.bool_())).cast(CANDIDATE_SCHEMA)
    if priors is None or not priors.num_rows:
        return new
    old = priors.select([f.name for f in CANDIDATE_FIELDS if f.name != PRIOR])
    old = old.append_column(PRIOR, pa.array([True] * old.num_rows, pa.bool_())).cast(CANDIDATE_SCHEMA)
    both = pa.concat_tables([new, old])
    return both.take(pc.sort_indices(both, [("row", "ascending"), ("candidate", "ascending")]))


def nest(flat: pa.Table) -> pa.Table:
    """Candidates (CANDIDATE_SCHEMA, ordered by row) → one record per manifest row."""
    rows = flat["row"].to_numpy()
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]]) if len(rows) else np.array([], np.int64)
    offsets = pa.array(np.r_[starts, len(rows)].astype(np.int32))
    batches = flat.combine_chunks().to_batches()
    structs = batches[0].to_struct_array() if batches else pa.array([], pa.struct(CANDIDATE_FIELDS))
    return pa.table({"id": flat["id"].take(pa.array(starts)), "candidates": pa.ListArray.from_arrays(offsets, structs)},
                    schema=WORK_SCHEMA)


def unnest(batch: pa.Table) -> pa.Table:
    """A batch of work records → the flat candidates of its rows."""
    flat = pc.list_flatten(batch["candidates"])
    return pa.Table.from_struct_array(flat.combine_chunks() if isinstance(flat, pa.ChunkedArray) else flat)


class UnitModels:
    """Which model each unit of work needs, kept as runs of consecutive units of one model.

    write_work cuts each chunk of the plan into units a model at a time, so a run is a chunk's
    units of one model (and runs of the same model in a row merge): a few runs per chunk however
    many units there are. The driver holds this for the whole run: two numbers a run, nothing
    per unit. (A list of each unit's model, and the router's queues of unit numbers built from
    it, took 48 bytes a unit: 48 MB of driver at a million units; bench/RESULTS.md, issue 20.)"""

    def __init__(self) -> None:
        self._starts = array("q")  # first unit of each run; a run ends where the next starts
        self._models = array("q")  # the model of each run (an index into WorkIndex.models)
        self._units = 0

    @classmethod
    def of(cls, models: Iterable[int]) -> UnitModels:
        """From each unit's model in turn (tests, small lists)."""
        runs = cls()
        for model in models:
            runs.append(model, 1)
        return runs

    def append(self, model: int, units: int) -> None:
        """The next `units` units need `model`."""
        if units <= 0:
            return
        if not self._models or self._models[-1] != model:
            self._starts.append(self._units)
            self._models.append(model)
        self._units += units

    def __len__(self) -> int:
        return self._units

    def __getitem__(self, unit: int) -> int:
        if not 0 <= unit < self._units:
            raise IndexError(unit)
        return self._models[bisect_right(self._starts, unit) - 1]

    def runs(self) -> Iterator[tuple[int, range]]:
        """(model, its units) of each run, in unit order."""
        stops = [*self._starts[1:], self._units][:len(self._starts)]
        return ((m, range(a, b)) for m, a, b in zip(self._models, self._starts, stops, strict=True))

    def __iter__(self) -> Iterator[int]:
        return (model for model, units in self.runs() for _ in units)


@dataclass
class WorkIndex:
    """What the runner needs to route units: each unit's model (`unit_model`, runs of indices
    into `models`), and each model's share of the work (`weight`: Σ steps × width × height of
    its new candidates, GPU-seconds' proxy within a family, by which generate pools are sized)."""

    models: list[ModelRef] = field(default_factory=list)
    unit_model: UnitModels = field(default_factory=UnitModels)
    weight: list[float] = field(default_factory=list)
    uses: list[ModelUse] = field(default_factory=list)  # per model: what its units need

    def __len__(self) -> int:
        return len(self.unit_model)

    def add(self, ref: ModelRef, units: int, weight: float, use: ModelUse) -> None:
        if ref not in self.models:
            self.models.append(ref)
            self.weight.append(0.0)
            self.uses.append(ModelUse())
        i = self.models.index(ref)
        self.unit_model.append(i, units)
        self.weight[i] += weight
        self.uses[i] = self.uses[i] | use


# Rows of one chunk are ordered by these before they are cut into units: a unit holds one model
# (an actor holds it), and an actor's units come a style at a time (its LoRA and images switch once).
UNIT_ORDER = ("model", "model_revision", "style")


def write_work(chunks: Iterable[pa.Table], path: Path, rows_per_group: int) -> WorkIndex:
    """Write the work file from candidate tables of whole rows (CANDIDATE_SCHEMA, a chunk of the
    plan at a time), one record batch per unit of work, each unit of one model; returns the
    units' index."""
    path.parent.mkdir(parents=True, exist_ok=True)
    index = WorkIndex()
    with pa.ipc.new_file(path, WORK_SCHEMA, options=pa.ipc.IpcWriteOptions(compression="lz4")) as writer:
        for flat in chunks:
            if not flat.num_rows:
                continue
            rows = nest(flat)
            first = pa.Table.from_struct_array(pc.list_element(rows["candidates"], 0)).select(UNIT_ORDER)
            order = pc.sort_indices(first, [(k, "ascending") for k in UNIT_ORDER])  # stable
            rows, first = rows.take(order), first.take(order)
            model = pc.binary_join_element_wise(first["model"], pc.fill_null(first["model_revision"], ""), "\x1f")
            for start, stop in _runs(model):
                ref = ModelRef(first["model"][start].as_py(), first["model_revision"][start].as_py())
                batches = rows.slice(start, stop - start).to_batches(max_chunksize=rows_per_group)
                for batch in batches:
                    writer.write_batch(batch)
                mine = pa.Table.from_struct_array(pc.list_flatten(rows["candidates"].slice(start, stop - start)))
                new = mine.filter(pc.invert(mine[PRIOR]))
                weight = pc.sum(pc.multiply(pc.multiply(new["steps"], new["width"]), new["height"])).as_py() or 0
                index.add(ref, len(batches), float(weight), ModelUse(
                    tuple(sorted(mine["style"].unique().fill_null("(none)").to_pylist())),
                    pc.any(pc.is_valid(mine["style_image"])).as_py(),
                    pc.any(pc.is_valid(mine["structure_image"])).as_py(),
                    tuple(sorted(mine["lora"].drop_null().unique().to_pylist()))))
    return index


def _runs(values: pa.ChunkedArray) -> list[tuple[int, int]]:
    """(start, stop) of each run of equal values."""
    v = values.to_pylist()
    starts = [i for i in range(len(v)) if i == 0 or v[i] != v[i - 1]]
    return list(zip(starts, [*starts[1:], len(v)], strict=True))


def rows_per_group(rows: int, candidates: int, batch_size: int, max_groups: int = MAX_GROUPS) -> int:
    """Manifest rows per unit of work, for `rows` pending rows holding `candidates` pending
    candidates: about one generation batch of candidates, fewer units than `max_groups` for
    very large runs (each unit costs an actor call and a results commit)."""
    rows = rows or 1
    per_batch = max(1, round(batch_size * rows / max(candidates, 1)))
    return max(per_batch, -(-rows // max_groups))


class WorkFile:
    """The units of a work file, read one at a time."""

    def __init__(self, path: str | Path):
        self._map = pa.memory_map(str(path))
        self._reader = pa.ipc.open_file(self._map)

    def __len__(self) -> int:
        return self._reader.num_record_batches

    def unit(self, i: int) -> pa.Table:
        return pa.Table.from_batches([self._reader.get_batch(i)])

    def __iter__(self) -> Iterator[pa.Table]:
        return (self.unit(i) for i in range(len(self)))

    def close(self) -> None:
        self._map.close()
