"""Identity: one canonical typed encoding behind item ids, seeds and judge keys; golden values."""

import base64
import math

import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.plan.build import build_plan
from pipeline.plan.identity import derive_seed, encode, encode_field, encoded, keys, literal
from pipeline.spec.manifest import load_inputs
from tests.helpers import job


def test_the_encoding_tells_apart_what_string_formatting_confuses():
    assert encode(7.5) != encode("7.5")
    assert encode(None) != encode("") and encode(None) != encode("None")
    assert encode("a", "bc") != encode("ab", "c")
    assert encode(1) != encode(1.0) != encode(True) and encode(1) != encode("1")
    assert encode("a\x1fb") != encode("a", "b")  # the old separator inside a value
    assert encode((2**63) - 1) != encode(float(2**63 - 1))
    for a, b in [((7.5,), ("7.5",)), ((None,), ("",)), (("a", "bc"), ("ab", "c"))]:
        assert derive_seed("job", 1, *a) != derive_seed("job", 1, *b)
    # one value, one field: -0.0 is 0.0, every NaN is one NaN, an int's field is its value's
    assert encode(-0.0) == encode(0.0)
    assert encode(float("nan")) == encode(-float("nan")) == encode(math.copysign(float("nan"), -1))
    with pytest.raises(TypeError):
        encode(b"bytes")


def test_the_encoding_is_pinned():
    """The exact bytes: must never change without a bump of plan.ITEM_RECIPE."""
    assert encode("a", 7, -7, 7.5, None, True, "", "日") == (
        b"S1:aI1:7I2:-7F19:4620130267728707584NB1:1S0:" + "S3:日".encode())


_values = st.one_of(st.none(), st.booleans(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=True),
                    st.text(max_size=6))


def _same(a, b) -> bool:
    """Equal as typed values, as the encoding sees them (-0.0 is 0.0, NaN is NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    return a == b


@given(st.lists(_values, max_size=4), st.lists(_values, max_size=4))
def test_two_tuples_share_a_key_only_when_they_are_the_same_values(a, b):
    same = len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    assert (encode(*a) == encode(*b)) == same


_columns = {
    pl.Int64: st.integers(-(2**63), 2**63 - 1),
    pl.Int32: st.integers(-(2**31), 2**31 - 1),
    pl.UInt64: st.integers(0, 2**64 - 1),
    pl.Float64: st.floats(allow_nan=True),
    pl.Float32: st.floats(width=32, allow_nan=True),
    pl.String: st.text(),
    pl.Boolean: st.booleans(),
}


@given(st.sampled_from(list(_columns)).flatmap(
    lambda t: st.tuples(st.just(t), st.lists(st.one_of(st.none(), _columns[t]), max_size=8))))
def test_a_column_is_encoded_as_its_values_are(case):
    """The vectorised encoding of a plan's columns is `encode_field` of each value."""
    dtype, values = case
    column = pl.Series("x", values, dtype=dtype)
    assert encoded(column).to_list() == [encode_field(v) for v in column.to_list()]


def test_a_key_of_columns_and_constants_is_the_encoding_of_its_row():
    df = pl.DataFrame({"s": ["a", None, "7.5"], "f": [7.5, None, -0.0], "i": pa.array([1, None, -3], pa.int32())})
    got = keys(df, literal("v1"), "s", "f", literal(None), "i").to_list()
    assert [k.encode() for k in got] == [encode("v1", s, f, None, i) for s, f, i in df.iter_rows()]


# A small fixed job: every seed rule, a style template and settings, a product photo (by its
# bytes), a pinned hub model (its fingerprint is its id and revision, nothing on disk).
PRODUCT_PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFElEQVR4nGM8ISfHgA0wYRUdtBIA0MoBF"
                               "D5jqJkAAAAASUVORK5CYII=")
GOLDEN_ROWS = {"id": ["mug", "cup", "lamp", "bottle"],
               "prompt": ["a red mug", "朝のコーヒーカップ", "a desk lamp", "a bottle"],
               "style": ["studio", "brand", None, None], "seed": pa.array([5, None, None, None], pa.int64()),
               "product_image": [None, None, None, "bottle.png"]}
GOLDEN_STYLES = {"style": ["studio", "brand"], "prompt_template": ["{prompt}, studio photo", None],
                 "negative_prompt": ["blurry", None], "steps": pa.array([3, None], pa.int64()),
                 "guidance_scale": [7.5, None], "seeds": pa.array([None, [11, 22]], pa.list_(pa.int64()))}
GOLDEN_EXTRA = ('[models]\ndiffusion = "acme/diffusion-model"\ndiffusion_revision = "0123abcd"\n'
                "[generate]\nsteps = 4\nwidth = 64\nheight = 64\nguidance_scale = 5.0\nstrength = 0.5\n")

# Computed once, by the encoding above. They must never change without a bump of
# plan.ITEM_RECIPE: a changed item id regenerates (and re-bills) every image of a catalogue.
GOLDEN = {
    ('mug', 0): ('033c8ee21510cfc3e6fe2233277afc0a', 5),
    ('mug', 1): ('1e2b5705a140a3ef446f5287b64b78d7', 7764786496756443835),
    ('mug', 2): ('0a87473f2761af620bb036a3efe649a5', 6012699623623211973),
    ('cup', 0): ('8d0ceaef7a3c07cb3941e6233fcbfa6b', 11),
    ('cup', 1): ('e63cb066b8950c206e081c7988c86d39', 22),
    ('cup', 2): ('3cdf7930c4e9baaadffd3ddd5c093add', 8662179897905036933),
    ('lamp', 0): ('33a2f7c5501fb20805e5174085ffc8b9', 7171498441118027418),
    ('lamp', 1): ('fb53aeccb3d23d2fce8b53baa278ff71', 6420214080433765059),
    ('lamp', 2): ('1f37e0e8c82afc73bd92c00bda6bc4bb', 3784978752855901153),
    ('bottle', 0): ('7ddd07c3e6cd4a44948e581fba3185af', 9134047380625011730),
    ('bottle', 1): ('90a3bab929d27e7b2ca815587eae61df', 2967773342174572248),
    ('bottle', 2): ('1921afd405e63118c283e50a6f1a54c2', 4425578942306722263),
}
GOLDEN_JUDGE_KEY = "de5c1b4a1a942466"


def test_golden_item_ids_and_seeds(tmp_path):
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "bottle.png").write_bytes(PRODUCT_PNG)
    cfg = job(tmp_path, GOLDEN_ROWS, styles=GOLDEN_STYLES, extra=GOLDEN_EXTRA, num_candidates=3, keep=1, seed=42)
    plan = build_plan(load_inputs(cfg), cfg).to_pylist()
    got = {(r["id"], r["candidate"]): (r["item_id"], r["seed"]) for r in plan}
    assert got == GOLDEN
    assert {r["judge_key"] for r in plan} == {GOLDEN_JUDGE_KEY}
    # the seeds are the rules' own: derive_seed is what the plan uses
    assert got["mug", 0][1] == 5 and got["mug", 1][1] == derive_seed("row", 5, 1)
    assert (got["cup", 0][1], got["cup", 1][1], got["cup", 2][1]) == (11, 22, derive_seed("style", 11, 2))
    assert got["lamp", 2][1] == derive_seed("job", 42, "lamp", 2)
    modes = {r["id"]: (r["mode"], r["steps"], r["guidance_scale"], r["strength"]) for r in plan}
    assert modes == {"mug": ("t2i", 3, 7.5, None), "cup": ("t2i", 4, 5.0, None), "lamp": ("t2i", 4, 5.0, None),
                     "bottle": ("img2img", 4, 5.0, 0.5)}


def test_two_rows_whose_words_differ_are_two_items(tmp_path):
    """A prompt and a negative prompt that joined alike ("x\\x1fy" + "z" and "x" + "y\\x1fz": the
    old separator inside the words) named one image: a rerun after the edit kept the old one."""
    def item_ids(folder, prompt, negative):
        cfg = job(folder, {"id": ["a"], "prompt": [prompt], "negative_prompt": [negative]}, styles=None)
        return [r["item_id"] for r in build_plan(load_inputs(cfg), cfg).to_pylist()]

    assert item_ids(tmp_path / "1", "x\x1fy", "z") != item_ids(tmp_path / "2", "x", "y\x1fz")
