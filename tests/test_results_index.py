"""Finding committed outcomes by item id: the lookup every plan chunk makes against every
outcome committed so far, so it must cost the chunk's length, not the run's, and be exact."""

import pyarrow as pa

import pipeline.run.shards as shards
from pipeline.run.shards import ItemIndex


def test_lookup_finds_each_id_and_nulls_the_absent():
    table = pa.array([f"{i:032x}" for i in range(0, 2000, 2)])
    index = ItemIndex(table)
    query = pa.array([f"{i:032x}" for i in (10, 11, 0, 1998, 1999, 10)])
    assert index.lookup(query).to_pylist() == [5, None, 0, 999, None, 5]
    assert ItemIndex(pa.array([], pa.string())).lookup(query).to_pylist() == [None] * 6
    assert index.lookup(pa.chunked_array([query.slice(0, 2), query.slice(2)])).to_pylist()[:3] == [5, None, 0]


def test_ids_whose_hashes_collide_are_still_told_apart(monkeypatch):
    # Every id gets the same 64-bit hash: only the full comparison can tell them apart.
    monkeypatch.setattr(shards, "_hash", lambda ids: __import__("numpy").zeros(len(ids), "uint64"))
    index = ItemIndex(pa.array(["a", "b", "c"]))
    assert index.lookup(pa.array(["c", "x", "a", "b"])).to_pylist() == [2, None, 0, 1]
