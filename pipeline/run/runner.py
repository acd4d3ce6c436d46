"""Ray wiring: the only module that imports Ray.

Units of work (whole manifest rows, read from the work file by the driver) → a generate stage
on GPU actors (fractional-CPU actors on a CPU machine) → a write stage on CPU actors → the
outcome tables stream back to the driver, which commits results shards as they arrive.

The runner knows no stage by name (img2dataset's distributor knows nothing of images): the job
hands it `Stages` (run/units.py), factories that build the stages on each actor and a callback
that turns a unit that failed whole (its worker died on every retry, a stage raised) into error
rows, under the reason code of the stage that failed.

Plain Ray actors, not Ray Data: the stage output goes from the generating actor straight to a
writer as an object reference, and the driver sleeps in `ray.wait`. Ray Data's executor polls
(a scheduling step every 0.1 s, the consumer every 10 ms) and runs helper actors; on a 2-core
machine that control plane took about 13% of a core away from generation (bench/RESULTS.md).
Pool sizes (run/routing.py) come from the cluster's resources, never a fixed count: on 2 cores an actor that
asked for a whole CPU would starve everything else.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator

import pyarrow as pa

from pipeline.errors import JobError
from pipeline.plan.work import UnitModels
from pipeline.run.routing import Pools, Router
from pipeline.run.units import Chain, StageFailed, Stages, one_line

# What the actors need from the driver's environment on a cluster whose nodes have their own:
# caches, offline switches, where the object store is. Never credentials: those come from each
# node (a Kubernetes Secret, a workload identity), as the runtime env is visible cluster-wide.
FORWARDED_ENV = ("ASSET_PIPELINE_MODELS", "ASSET_PIPELINE_CACHE", "ASSET_PIPELINE_FAULTS", "HF_HOME",
                 "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3",
                 "AWS_REGION", "AWS_DEFAULT_REGION")


def actor_env() -> dict[str, str]:
    """The driver's settings the actors get through Ray's runtime env."""
    return {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}


def connect(address: str | None) -> dict[str, float]:
    """Join a cluster (or start a local one) and return its resources.

    Without an address (nor RAY_ADDRESS, which `ray job submit` sets), the run always starts
    its own private local instance: never a cluster that `ray start` left on this machine,
    which Ray would otherwise join on its own (it finds its address in a file under
    /tmp/ray) and which was not asked for. `auto` joins that cluster."""
    import ray

    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS") or "local"
        os.environ.setdefault("RAY_DEDUP_LOGS", "1")
        # A local instance starts no idle worker processes ahead of time: the pipeline runs
        # only actors, and an idle worker polls at about 1% of a core (bench/RESULTS.md). Its
        # workers inherit this process's environment; a cluster's get the settings they need
        # (and a cluster's settings are its own: joining one, Ray refuses a _system_config).
        local = {"_system_config": {"enable_worker_prestart": False, "prestart_worker_first_driver": False}}
        remote = {"runtime_env": {"env_vars": actor_env()}}
        ray.init(address=address, include_dashboard=False, ignore_reinit_error=True,
                 log_to_driver=True, configure_logging=False, **(local if address == "local" else remote))
    return dict(ray.cluster_resources())


# Units queued per generate actor: one running and one waiting, so the GPU never idles
# while the driver reads the next unit, and memory stays bounded however long the run.
QUEUE_PER_ACTOR = 2
# Ray restarts a dead actor and retries the units it held (running and queued) this many times.
TASK_RETRIES = 3


class _StageActor(Chain):
    """The stages of one Ray actor: built once (models load here), then applied to each unit."""

    def ready(self) -> str:
        """This actor's id, once every stage is built (a failed build raises here)."""
        import ray

        return ray.get_runtime_context().get_actor_id()


def execute(work_path: str, unit_model: UnitModels, held: list[list[int]], stages: Stages, pools: Pools,
            fence: Callable[[], None] = lambda: None) -> Iterator[pa.Table]:
    """Stream outcome tables back to the driver, one per unit of work, as they finish.

    Each unit needs one model (`unit_model`, runs of indices); generate actor `a` holds the
    models `held[a]` (run/routing.py) and gets only units of those, a model at a time.

    What the driver holds is flat in the number of units: the units left are ranges (the
    router's), and everything kept per unit is kept only while it is in flight (at most
    `QUEUE_PER_ACTOR` per actor, writers included: the object references in `generating` and
    `finishing`) or, for a suspect, until it runs alone (no new unit goes out while any waits,
    so there are never more suspects than units were in flight).

    `fence` (the output lock's check) runs before each hand-out of work: a driver that lost its
    output (paused past its lease, then taken over) raises there. (The write stage checks that the lock
    still names its run before each image it writes.)

    With writer actors, a unit is two calls: generate on a generate actor, then write on a
    writer, chained by reference. Without them (`pools.write_actors == 0`, a CPU node), the
    generate actor writes each unit itself after generating it.

    A unit that keeps killing its actor (a crash in native code, say) must not loop forever or
    take the units queued behind it down with it. When a unit has used up Ray's retries, it is
    a suspect: the driver lets the units in flight finish, then runs each suspect alone, once.
    A suspect that dies alone becomes `error` rows (a rerun retries it); one that succeeds had
    only been queued behind the culprit. A unit's error rows (`stages.failed`) name the stage
    that failed: the one that raised, or the one whose actor died (a generate actor that also
    writes counts as the generate stage's).

    No unit is submitted before every actor has started: an actor that cannot (models that do
    not load, signer keys its node does not have: they are read there, never shipped) would
    fail every unit, and a writer that cannot start must not leave the generate actors
    generating in the meantime. The run stops with its message instead.
    """
    import ray
    from ray.exceptions import RayActorError

    from pipeline.plan.work import WorkFile

    work = WorkFile(work_path)
    actor = ray.remote(_StageActor)
    restart = {"max_restarts": -1, "max_task_retries": TASK_RETRIES}
    fused = pools.write_actors == 0
    router = Router(unit_model, held)
    gens = [actor.options(num_cpus=pools.cpus_per_actor, num_gpus=pools.gpus_per_actor, **restart)
            .remote([stages.generate_for(models)] + ([stages.write] if fused else []))
            for models in held]
    writers = [actor.options(num_cpus=pools.cpus_per_writer, **restart).remote([stages.write])
               for _ in range(pools.write_actors)]
    code_of: dict[str, str] = {}  # actor id → the code of the stage it fails under (its first)
    gen_queue, write_queue = [0] * len(gens), [0] * len(writers)
    generating: dict = {}  # a generate call whose output goes on to a writer → generate actor
    finishing: dict = {}  # the last call of a unit → (generate actor or None, writer or None, unit, alone)
    limit = QUEUE_PER_ACTOR * (len(gens) + len(writers))  # units in flight, writers included
    suspects: list[int] = []

    def submit(group: int, g: int, alone: bool) -> None:
        once = {"max_task_retries": 0} if alone else {}
        staged = gens[g].run.options(**once).remote(work.unit(group))
        gen_queue[g] += 1
        if fused:
            finishing[staged] = (g, None, group, alone)
            return
        w = write_queue.index(min(write_queue))
        generating[staged] = g
        finishing[writers[w].run.options(**once).remote(staged)] = (None, w, group, alone)
        write_queue[w] += 1

    def stop_if_init_failed(e: RayActorError) -> None:
        if e.actor_init_failed:  # models or signer failed to load: every unit would fail
            raise JobError(f"a pipeline actor could not start: {_root_message(e)}") from e

    def failed(group: int, error: Exception) -> pa.Table:
        """The error rows of a unit that failed whole, under the code of the stage that failed."""
        if isinstance(error, RayActorError):
            return stages.failed(work.unit(group), code_of.get(error.actor_id, stages.generate.code),
                                 f"worker died on this unit {TASK_RETRIES + 2} times, the last time with no other "
                                 f"unit beside it: {_root_message(error)}")
        cause = getattr(error, "cause", None)  # a RayTaskError holds what the actor raised
        if isinstance(cause, StageFailed):
            return stages.failed(work.unit(group), cause.code, f"unit failed: {cause.message}")
        return stages.failed(work.unit(group), stages.generate.code, f"unit failed: {_root_message(error)}")

    def takers() -> list[int]:
        """The generate actors with room in their queue and units of their models left."""
        if len(finishing) >= limit:
            return []
        return [g for g in range(len(gens)) if gen_queue[g] < QUEUE_PER_ACTOR and router.has_for(g)]

    def hand_out(actors: list[int]) -> None:
        """Fill these actors' queues with units of the models each holds, emptiest first."""
        for g in sorted(actors, key=lambda i: gen_queue[i]):
            while gen_queue[g] < QUEUE_PER_ACTOR and len(finishing) < limit:
                group = router.next_for(g)
                if group is None:
                    break
                submit(group, g, alone=False)

    def idle_holder(group: int) -> int:
        return min(router.holders_of(group), key=lambda a: gen_queue[a])

    try:
        try:  # every actor constructed (models loaded, signer read), or the first failure
            ids = ray.get([a.ready.remote() for a in gens + writers])
        except RayActorError as e:
            stop_if_init_failed(e)
            raise
        code_of.update(zip(ids, [stages.generate.code] * len(gens) + [stages.write.code] * len(writers),
                           strict=True))
        while router.left() or finishing or suspects:
            if suspects:
                if not finishing:  # drained: the suspect runs with nothing beside it
                    fence()
                    group = suspects.pop(0)
                    submit(group, idle_holder(group), alone=True)
            elif actors := takers():
                fence()
                hand_out(actors)
            # fetch_local=False: a finished generation is only counted here; its pixels go
            # from the generating actor to the writer, never through the driver.
            ready, _ = ray.wait([*generating, *finishing], num_returns=1, fetch_local=False)
            for ref in ready:
                if ref in generating:
                    gen_queue[generating.pop(ref)] -= 1
                    continue
                g, w, group, alone = finishing.pop(ref)
                if g is not None:
                    gen_queue[g] -= 1
                if w is not None:
                    write_queue[w] -= 1
                try:
                    outcome = ray.get(ref)
                except RayActorError as e:
                    stop_if_init_failed(e)  # a restarted actor whose constructor now fails
                    if not alone:
                        suspects.append(group)
                        continue
                    outcome = failed(group, e)
                except Exception as e:  # noqa: BLE001 — a stage raised, an object was lost: this unit only
                    outcome = failed(group, e)
                yield outcome
    finally:
        work.close()
        for a in gens + writers:
            ray.kill(a)


def _root_message(error: Exception) -> str:
    """The original exception inside a Ray error: its text ends with the traceback's last
    `SomeError: message` line, and the message may go on over more lines."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    starts = [i for i, line in enumerate(lines) if re.match(r"^[\w.]+(Error|Exception|Exit)\b.*:", line)]
    return one_line(lines[starts[-1]:] if starts else (lines[-1:] or [type(error).__name__]))
