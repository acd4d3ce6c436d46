"""Named fault points, for the reliability tests: `ASSET_PIPELINE_FAULTS="point=arg,..."`.

Unset in production, where every check is one dict lookup. Points:
  driver.kill_before_shard=N  SIGKILL the driver about to commit its N-th shard (images written)
  driver.kill_mid_shard=N     SIGKILL the driver with shard N written to a temp file, not renamed
  driver.kill_after_shard=N   SIGKILL the driver right after committing its N-th shard
  driver.kill_before_compact  SIGKILL the driver with all shards committed, before results.parquet
  consolidate.kill_before_manifest  SIGKILL the driver with a generation's range files written, before
                              its current.json (the generation in force is still the old one)
  consolidate.kill_after_manifest   SIGKILL it right after current.json names the new generation
  consolidate.kill_mid_clean  SIGKILL it between deleting the shards the new generation covers and the
                              range files of older generations
  driver.interrupt_after_units=N  the driver is interrupted (KeyboardInterrupt) after receiving N units
  candidate.error=SEED[|SEED]  generation raises for the candidates with these seeds
  prompt.error=SEED           the prompt check raises for a unit holding this seed (a stage exception)
  write.error=SEED            writing the image of the candidate with this seed raises
  candidate.oom               generation raises out-of-memory for any batch larger than one
  candidate.oom_after_model   the same, once the model has run on the batch (its time is spent)
  score.error=SEED            CLIP scoring raises for the candidate with this seed
  actor.exit_once=PATH        the generate actor dies on its first batch unless PATH exists
  writer.exit_once=PATH       the writing stage dies on its first unit unless PATH exists
  actor.exit_on_seed=SEED     the generate actor dies on every unit holding this seed (a poison unit)
"""

from __future__ import annotations

import os
import signal

ENV = "ASSET_PIPELINE_FAULTS"


def _points() -> dict[str, str]:
    raw = os.environ.get(ENV, "")
    return dict((p.split("=", 1) + [""])[:2] for p in raw.split(",") if p)


def arg(point: str) -> str | None:
    """The argument of an armed fault point ('' when it has none), or None when unarmed."""
    return _points().get(point) if ENV in os.environ else None


def kill_if(point: str, count: int | None = None) -> None:
    """SIGKILL this process when `point` is armed (for the given count, if it takes one)."""
    value = arg(point)
    if value is not None and (value == "" or count is None or int(value) == count):
        os.kill(os.getpid(), signal.SIGKILL)
