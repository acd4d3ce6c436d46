"""Work records: one per manifest row with its candidates nested, so no batching splits a row."""

import pyarrow as pa
import pytest

from pipeline.plan.work import PRIOR, UnitModels, WorkFile, candidates, nest, rows_per_group, unnest, write_work
from pipeline.spec import schema


def pending(counts: list[int]) -> pa.Table:
    rows = [(r, k) for r, n in enumerate(counts) for k in range(n)]
    cols = {f.name: pa.nulls(len(rows), f.type) for f in schema.PLAN_FIELDS}
    cols.update(id=pa.array([f"id-{r}" for r, _ in rows]), row=pa.array([r for r, _ in rows], pa.int64()),
                candidate=pa.array([k for _, k in rows], pa.int64()),
                item_id=pa.array([f"{r}-{k}" for r, k in rows]))
    return pa.table(cols, schema=schema.PLAN_SCHEMA)


def test_nest_unnest_round_trip_with_earlier_candidates_in_their_rows():
    flat = pending([3, 1, 2])
    new, old = flat.filter(pa.array([True, False, True, True, True, False])), flat.filter(
        pa.array([False, True, False, False, False, True]))
    old = old.append_column(schema.OUTCOME_FIELDS[0], pa.array(["run0", "run0"]))
    for f in schema.OUTCOME_FIELDS[1:]:
        old = old.append_column(f, pa.nulls(2, f.type))
    work = nest(candidates(new, old))
    assert work.num_rows == 3 and work["id"].to_pylist() == ["id-0", "id-1", "id-2"]
    back = unnest(work)
    assert back.select([f.name for f in schema.PLAN_FIELDS]).equals(flat)  # row, then candidate order
    assert back[PRIOR].to_pylist() == [False, True, False, False, False, True]
    assert back["run_id"].to_pylist() == [None, "run0", None, None, None, "run0"]


def test_units_of_work_hold_whole_rows(tmp_path):
    flat = pending([3, 1, 4, 2, 2, 5])
    for rows in (1, 2, 4, 100):
        groups = len(write_work([candidates(flat)], tmp_path / f"w{rows}.arrow", rows))
        units = list(WorkFile(tmp_path / f"w{rows}.arrow"))
        assert len(units) == groups == -(-6 // rows)
        seen = []
        for unit in units:
            cands = unnest(unit)
            assert sorted(set(cands["id"].to_pylist())) == sorted(unit["id"].to_pylist())
            seen += cands["item_id"].to_pylist()
        assert seen == flat["item_id"].to_pylist()


def test_rows_per_group_targets_the_batch_size_and_caps_the_task_count():
    assert rows_per_group(10, 40, 8) == 2
    assert rows_per_group(10, 10, 8) == 8
    assert rows_per_group(3, 48, 4) == 1
    assert rows_per_group(1000, 1000, 4, max_groups=10) == 100


def test_the_work_file_is_written_a_chunk_at_a_time_and_units_hold_whole_rows(tmp_path):
    """Chunks of whole rows (a chunk of the plan each) make one file; no unit spans two rows'
    halves, and every candidate is there once, in order."""
    flat = candidates(pending([3, 1, 4, 2, 2, 5, 1]))
    row = flat["row"].to_pylist()
    cut = [row.index(3), row.index(6)]  # chunk boundaries between rows
    chunks = [flat.slice(0, cut[0]), flat.slice(cut[0], cut[1] - cut[0]), flat.slice(cut[1])]
    groups = len(write_work(iter(chunks), tmp_path / "w.arrow", 2))
    units = [unnest(u) for u in WorkFile(tmp_path / "w.arrow")]
    assert groups == len(units) == 2 + 2 + 1  # 3 rows → 2 units, 3 rows → 2, 1 row → 1
    assert [c for u in units for c in u["item_id"].to_pylist()] == flat["item_id"].to_pylist()
    assert all(len(set(u["row"].to_pylist())) <= 2 for u in units)


def test_each_units_model_is_kept_as_runs_not_per_unit():
    units = UnitModels()
    for model, count in [(0, 3), (0, 2), (1, 0), (1, 1), (0, 2)]:  # chunk after chunk, as write_work adds them
        units.append(model, count)
    assert len(units) == 8 and list(units) == [0, 0, 0, 0, 0, 1, 0, 0]
    assert [(m, (r.start, r.stop)) for m, r in units.runs()] == [(0, (0, 5)), (1, (5, 6)), (0, (6, 8))]
    assert (units[4], units[5], units[7]) == (0, 1, 0)
    assert list(UnitModels.of([1, 1, 0])) == [1, 1, 0] and not list(UnitModels().runs())
    with pytest.raises(IndexError):
        units[8]
