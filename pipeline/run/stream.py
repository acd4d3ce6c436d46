"""Stream and commit: the pending work goes out to the stages, and their outcomes are committed
in whole-row shards as they come back.

The job's side of the runner. It hands the runner stage factories and what a unit that failed
whole becomes (the runner knows no stage by name), picks Ray or in-process, reports progress,
and stops the run early when the error budget is spent. `fence` (the output lock's check) runs
before every commit: a run that lost its output commits nothing more.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from pipeline import faults
from pipeline.plan.work import PRIOR, WorkIndex
from pipeline.run.progress import Reporter
from pipeline.run.routing import assign, size_pools
from pipeline.run.runner import connect, execute
from pipeline.run.shards import ShardStore
from pipeline.run.units import Factory, Stages, execute_in_process
from pipeline.spec import vocabulary
from pipeline.spec.config import JobConfig


def stages(cfg: JobConfig, run_id: str, index: WorkIndex) -> Stages:
    """The stages of a run as the runner places them: built on each actor from the job (never key
    material: the signer reads its keys there; a generate actor loads the models it holds, each
    named by the styles that use it), and a failed unit's error rows, under the code of the
    stage that failed ("<stage>: <message>", like every error reason)."""
    from pipeline.stages.candidate import CandidateStage
    from pipeline.stages.contract import failed_outcomes
    from pipeline.stages.write import WriteStage

    def failed(unit: pa.Table, code: str, message: str) -> pa.Table:
        return failed_outcomes(unit, cfg.job.name, code, message)

    def generate_for(held: list[int]) -> Factory:
        models = {index.models[i]: index.uses[i] for i in held}
        return Factory(vocabulary.GENERATE_ERROR, partial(CandidateStage, cfg, models))

    return Stages(generate_for=generate_for,
                  write=Factory(vocabulary.WRITE_ERROR, partial(WriteStage, cfg, cfg.job.output, run_id)),
                  failed=failed, models=len(index.models))


def stream_and_commit(cfg: JobConfig, backend: str, pending: Path, index: WorkIndex, *, store: ShardStore,
                      run_id: str, to_go: int, planned: int, reporter: Reporter,
                      fence: Callable[[], None]) -> tuple[str | None, Counter]:
    """Run the units of the work file `pending` (`index`) and commit their outcomes: why the run
    stopped early (None when it did not), and this run's new outcomes by status."""
    committer = Committer(store, run_id, cfg.output.shard_rows, fence)
    budget = int(cfg.job.max_failed_fraction * planned)
    reporter.start(to_go)  # progress from here: the actors' start-up counts, as it is waited for
    try:
        stream = _start(cfg, backend, pending, index, run_id, reporter, fence)
        try:
            stopped = _consume(stream, committer, reporter, budget, cfg, planned)
        finally:
            try:
                committer.flush()  # what was ready is committed, whatever stopped the stream
            finally:
                stream.close()  # stops the actors now, not when the generator is collected
    finally:
        reporter.close()
    return stopped, committer.counts


def _start(cfg: JobConfig, backend: str, pending: Path, index: WorkIndex, run_id: str, reporter: Reporter,
           fence: Callable[[], None]) -> Iterator[pa.Table]:
    """The outcome tables of the pending units, from Ray's actors or in this process."""
    if backend != "ray":
        return execute_in_process(str(pending), stages(cfg, run_id, index), fence)
    resources = connect(cfg.cluster.address)
    pools = size_pools(cfg, resources)
    reporter.log(f"cluster: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU; "
                 f"{pools.generate_actors} generate actor(s), "
                 + (f"{pools.write_actors} writer(s)" if pools.write_actors else "each writing its own images"),
                 cpus=resources.get("CPU", 0), gpus=resources.get("GPU", 0),
                 generate_actors=pools.generate_actors, write_actors=pools.write_actors)
    held = assign(pools.generate_actors, index.weight)
    if len(index.models) > 1:
        reporter.log(f"models: {len(index.models)}; " + "; ".join(
            f"{ref} on {sum(i in h for h in held)} actor(s)" for i, ref in enumerate(index.models)),
            models=[str(m) for m in index.models], actors_per_model=[sum(i in h for h in held)
                                                                      for i in range(len(index.models))])
    return execute(str(pending), index.unit_model, held, stages(cfg, run_id, index), pools, fence)


def _consume(stream: Iterator[pa.Table], committer: Committer, reporter: Reporter, budget: int, cfg: JobConfig,
             planned: int) -> str | None:
    """Commit outcomes as they arrive, reporting progress; the reason the run stopped early, or None."""
    for units, batch in enumerate(stream, start=1):
        committer.add(batch)
        reporter.update(committer.counts)
        if faults.arg("driver.interrupt_after_units") == str(units):
            raise KeyboardInterrupt
        c = committer.counts
        if c[vocabulary.ERROR] > budget:
            return (f"error budget exceeded: {c[vocabulary.ERROR]} errors > "
                    f"{cfg.job.max_failed_fraction:.0%} of {planned} candidates")
    return None


class Committer:
    """Commits outcome tables in shards as they arrive. Each table is the outcome of whole units
    of work, so every shard holds whole manifest rows. `fence` (the lock's check) runs before
    each commit: a run that lost its output commits nothing more."""

    def __init__(self, store: ShardStore, run_id: str, shard_rows: int, fence: Callable[[], None]):
        self.store, self.run_id, self.shard_rows, self.fence = store, run_id, shard_rows, fence
        self.ready: list[pa.Table] = []
        self.ready_rows = 0
        self.counts: Counter = Counter()  # outcomes of this run's new candidates, by status

    def add(self, batch: pa.Table) -> None:
        batch = batch.set_column(batch.schema.get_field_index("run_id"), "run_id",
                                 pa.array([self.run_id] * batch.num_rows, pa.string()))
        self.counts.update(batch.filter(pc.invert(batch[PRIOR]))["status"].to_pylist())
        self.ready.append(batch.drop_columns([PRIOR]))
        self.ready_rows += batch.num_rows
        if self.ready_rows >= self.shard_rows:
            self.flush()

    def flush(self) -> None:
        if self.ready:
            shard = self.store.written + 1  # the run's n-th shard (kill points count across its passes)
            faults.kill_if("driver.kill_before_shard", shard)
            self.fence()
            self.store.write(pa.concat_tables(self.ready), kill_point=("driver.kill_mid_shard", shard))
            faults.kill_if("driver.kill_after_shard", shard)
            self.ready, self.ready_rows = [], 0
