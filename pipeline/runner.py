"""Ray Data wiring: the only module that imports Ray.

Work blocks (whole manifest rows) → `CandidateStage` on GPU actors (or fractional-CPU actors
on a CPU machine) → `WriteStage` on CPU actors → streamed back to the driver, which commits
results shards as outcomes arrive. Pool sizes come from the cluster's resources, never a
fixed count: on 2 cores an actor that asked for a whole CPU would starve everything else.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass

import pyarrow as pa

from pipeline.config import JobConfig


@dataclass(frozen=True)
class Pools:
    generate_actors: int
    gpus_per_actor: float
    cpus_per_actor: float
    write_actors: int
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
    write = c.write_actors or max(1, min(32, int(spare)))
    return Pools(generate, gpus_per_actor, c.cpus_per_actor, write, c.cpus_per_writer)


def connect(address: str | None) -> dict[str, float]:
    """Join a cluster (or start a local one) and return its resources."""
    import ray

    if not ray.is_initialized():
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=True, configure_logging=False)
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.execution_options.verbose_progress = False
    return dict(ray.cluster_resources())


def _work_source(path: str):
    """One Ray read task per row group of the work file: one block, one actor call."""
    import pyarrow.parquet as pq
    from ray.data.block import BlockMetadata
    from ray.data.datasource import Datasource, ReadTask

    from pipeline.work import read_group

    class WorkSource(Datasource):
        def estimate_inmemory_data_size(self):
            meta = pq.ParquetFile(path).metadata
            return sum(meta.row_group(g).total_byte_size for g in range(meta.num_row_groups))

        def get_read_tasks(self, parallelism: int, **_):
            meta = pq.ParquetFile(path).metadata
            return [ReadTask(lambda g=g: [read_group(path, g)],
                             BlockMetadata(num_rows=meta.row_group(g).num_rows,
                                           size_bytes=meta.row_group(g).total_byte_size,
                                           input_files=[path], exec_stats=None))
                    for g in range(meta.num_row_groups)]

    return WorkSource()


def execute(work_path: str, groups: int, cfg: JobConfig, output_dir: str, pools: Pools) -> Iterator[pa.Table]:
    """Stream outcome tables back to the driver, one per unit of work."""
    import ray.data

    from pipeline.stages import CandidateStage, WriteStage

    # As many blocks as read tasks, so Ray does not split them further (a split would still
    # keep rows whole, see work.py, only make generation batches smaller). Ray Data restarts
    # dead actors and retries their batches by default (max_restarts=-1).
    # One reader at a time: a read is milliseconds, while every extra concurrent read task is a
    # new worker process whose start-up (about a CPU-second) competes with generation.
    ds = ray.data.read_datasource(_work_source(work_path), override_num_blocks=groups, num_cpus=0.1,
                                  concurrency=1)
    ds = ds.map_batches(
        CandidateStage, fn_constructor_kwargs={"cfg": cfg}, batch_size=None, batch_format="pyarrow",
        compute=ray.data.ActorPoolStrategy(size=pools.generate_actors), num_gpus=pools.gpus_per_actor,
        num_cpus=pools.cpus_per_actor)
    ds = ds.map_batches(
        WriteStage, fn_constructor_kwargs={"cfg": cfg, "output_dir": output_dir}, batch_size=None,
        batch_format="pyarrow", compute=ray.data.ActorPoolStrategy(size=pools.write_actors),
        num_cpus=pools.cpus_per_writer)
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def execute_in_process(work_path: str, cfg: JobConfig, output_dir: str) -> Iterator[pa.Table]:
    """The same stages without Ray: for debugging and fast tests."""
    from pipeline.stages import CandidateStage, WriteStage
    from pipeline.work import read_groups

    generate, write = CandidateStage(cfg), WriteStage(cfg, output_dir)
    for unit in read_groups(work_path):
        yield write(generate(unit))
