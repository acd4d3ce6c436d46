"""What a committed outcome is, as the state holds it, and which one counts.

The columns of an outcome that the results table takes (the rest comes from the plan), an
image embedding as a sidecar holds it, a shard of any release read as today's
(`normalised`), and the rule that the latest committed outcome of an item id is its outcome
(`latest`: commit order, then row order). `run/state.py` applies them a range at a time.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from pipeline.judge.outcome import with_reason_codes
from pipeline.spec import schema

# The columns of a committed outcome that the results table takes (the rest comes from the plan).
OUTCOME_SCHEMA = pa.schema([pa.field("item_id", pa.string()), pa.field("id", pa.string()),
                            pa.field("path", pa.string()), pa.field("truncated", pa.bool_()),
                            pa.field("truncated_by", pa.string()),
                            pa.field("scheduler", pa.string()), *schema.OUTCOME_FIELDS])
# An image embedding as a shard's sidecar holds it (brand figures).
EMBEDDING_SCHEMA = pa.schema([pa.field("item_id", pa.string()), pa.field("style", pa.string()),
                              pa.field("variant", pa.string()), schema.EMBEDDING_FIELD])
FILE_COLUMNS = ("path", "clean_path")  # the files an outcome stands on


def outcome_schema(columns: list[str] | None = None) -> pa.Schema:
    """OUTCOME_SCHEMA, or its item id, files and `columns` (in its order)."""
    if columns is None:
        return OUTCOME_SCHEMA
    wanted = {"item_id", *FILE_COLUMNS, *columns}
    return pa.schema([f for f in OUTCOME_SCHEMA if f.name in wanted])


def normalised(table: pa.Table) -> pa.Table:
    """A shard's outcomes as OUTCOME_SCHEMA: columns a shard of an older release lacks as
    nulls, reason codes where it had only reasons, repeated strings decoded."""
    for f in OUTCOME_SCHEMA:
        if f.name not in table.column_names:
            table = table.append_column(f, pa.nulls(table.num_rows, f.type))
    return with_reason_codes(table.select(OUTCOME_SCHEMA.names)).select(OUTCOME_SCHEMA.names).cast(OUTCOME_SCHEMA)


def latest(table: pa.Table) -> pa.Table:
    """Each item id's last row (rows in commit order), in item-id order."""
    if not table.num_rows:
        return table
    order = pa.table({"item_id": table["item_id"], "n": pa.array(np.arange(table.num_rows), pa.int64())})
    last = order.group_by("item_id").aggregate([("n", "max")])["n_max"]
    kept = table.take(last)
    return kept.take(pc.sort_indices(kept["item_id"]))


def merge_latest(consolidated: pa.Table, since: list[pa.Table]) -> pa.Table:
    """A range's latest rows: its consolidated rows (already the latest, in item-id order: the
    range files hold nothing else) when no shard since has touched the range, else `latest`
    of them all (a group-by and two takes a range: a tenth of a compaction at 2M candidates)."""
    if not any(t.num_rows for t in since):
        return consolidated
    return latest(pa.concat_tables([consolidated, *since]))
