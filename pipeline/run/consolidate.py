"""Consolidation: after a compaction, the shards become one file per range of item ids.

A run commits its outcomes in small shards (the commit points); left alone, a 20M-candidate
run would leave ~78,000 of them, each listed and read at every resume. The final join of a run
visits every range anyway, so `Consolidation` writes each range that changed (its latest
outcomes, sorted by item id, and its embeddings) into a new generation folder as it passes,
and `commit` makes that generation the one in force by writing `_state/current.json` last.

A kill at any point leaves a readable output, nothing lost, nothing counted twice:
- before `current.json` is written, the old generation (or none) and every shard are still
  the truth; the new folder is an orphan, removed by the next `clean`;
- after it, the new generation covers every shard numbered up to its `through`: readers skip
  those shards (`State`), and `clean` deletes them, a kill mid-way leaving only skipped files.
"""

from __future__ import annotations

import posixpath
import time
import uuid
from collections.abc import Callable

from pipeline import faults
from pipeline.run.generation import Generation
from pipeline.run.state import Range, State
from pipeline.storage import layout, tables
from pipeline.storage.store import Output

ROW_GROUP = 16_384  # rows per row group of a range file: a finer range reads only its own groups


class Consolidation:
    """Writes each range of a state's final join into a new generation; `commit` puts it in force."""

    def __init__(self, state: State, out: Output):
        self.state, self.out = state, out
        token = time.strftime("%Y%m%dT%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]
        self.folder = layout.state_generation(token)
        old = state.generation
        # ranges the shards since the last generation touched (the others' files are reused)
        self.touched = {key for outcomes, _ in state.segments for key in outcomes.keys_with_rows()}
        self.touched |= {key for _, embeddings in state.segments for key in embeddings.keys_with_rows()}
        self.reuse = old.name and old.digits == state.digits
        self.parts: dict[str, str] = {}
        self.embeddings: dict[str, str] = {}
        self.outcomes = 0

    @property
    def needed(self) -> bool:
        """Whether anything changed since the generation in force (shards were taken in)."""
        return self.state.seen > self.state.generation.through

    def __call__(self, found: Range) -> None:
        if not self.needed:
            return
        number, prefix, old = self.state.prefixes().index(found.prefix), found.prefix, self.state.generation
        self.outcomes += found.latest.num_rows
        if self.reuse and number not in self.touched:
            if prefix in old.parts:
                self.parts[prefix] = old.parts[prefix]
            if prefix in old.embeddings:
                self.embeddings[prefix] = old.embeddings[prefix]
            return
        if found.latest.num_rows:
            self.parts[prefix] = layout.state_outcomes(self.folder, prefix)
            self.out.put(self.parts[prefix], tables.to_bytes(found.latest, ROW_GROUP))
        embeddings = found.embeddings()
        if embeddings.num_rows:
            self.embeddings[prefix] = layout.state_embeddings(self.folder, prefix)
            self.out.put(self.embeddings[prefix], tables.to_bytes(embeddings, ROW_GROUP))

    def commit(self, before_commit: Callable[[], None] | None = None) -> Generation:
        """Put the new generation in force (current.json, written whole, last); when nothing
        changed, the one in force stays (the visits wrote nothing: a generation of no ranges
        would drop every outcome)."""
        if not self.needed:
            return self.state.generation
        generation = Generation(name=self.folder, digits=self.state.digits, through=self.state.seen,
                                outcomes=self.outcomes, committed=self.state.committed, parts=self.parts,
                                embeddings=self.embeddings)
        faults.kill_if("consolidate.kill_before_manifest")
        if before_commit:
            before_commit()
        self.out.put(layout.STATE_CURRENT, generation.to_json())
        faults.kill_if("consolidate.kill_after_manifest")
        return generation


def clean(out: Output, before_delete: Callable[[], None] | None = None) -> int:
    """Delete what the generation in force covers or no longer names: shards and sidecars
    numbered up to its `through`, and range files of other generations. How many went."""
    current = Generation.current(out)
    covered = [rel for prefix in (layout.SHARDS, layout.EMBEDDINGS) for rel in sorted(out.files(prefix))
               if layout.is_part(rel) and layout.part_number(rel) <= current.through]
    named = {*current.parts.values(), *current.embeddings.values(), layout.STATE_CURRENT}
    unnamed = sorted(rel for rel in out.files(layout.STATE) if rel not in named
                     and not posixpath.basename(rel).startswith(layout.TEMP_PREFIX))
    for i, batch in enumerate((covered, unnamed)):
        out.delete_many(batch, before_delete)
        if i == 0 and batch:
            faults.kill_if("consolidate.kill_mid_clean")
    return len(covered) + len(unnamed)
