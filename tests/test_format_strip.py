"""The README's format strip (docs/format_strip.py): from a finished output's results, the source
with the most written formats, then those formats in the job's order, one panel each at one
height, labelled, the source's place outlined where the plan's canvas put it.

The output is built by hand (a results table of the schema, images made the way outpainting
finishes a format, a run record): no models, no Ray."""

from __future__ import annotations

from fractions import Fraction

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from docs import format_strip
from pipeline.plan.canvas import canvas_for
from pipeline.spec import schema
from pipeline.spec.channel_formats import parse
from pipeline.stages.outpaint import finish
from pipeline.storage import layout
from pipeline.storage.records import write_json

SOURCE, MARGIN = (200, 30, 30), (20, 40, 220)  # the source's colour; what the "model" painted
JOB_SIZES = ["9:16", "16:9", "1.91:1", "300x250"]


def _source(colour=SOURCE, size=(64, 48)):
    return Image.new("RGB", size, colour)


def _format(source, variant: str, placement: str):
    """A format's image as outpainting finishes it: the margins painted, the source pasted back."""
    fmt = parse(variant)
    canvas = canvas_for(*source.size, fmt, placement)
    return finish(Image.new("RGB", (canvas.width, canvas.height), MARGIN), source, canvas, fmt), canvas


def _output(folder, with_formats: bool = True):
    """Row "a": a written image with four written formats (one the style's own, "4:5") and a
    rejected one; row "b": a written image with one format; row "c": a rejected image."""
    rows = []

    def add(item_id, row_id, row, candidate, status, image=None, parent=None, variant=None, placement=None):
        path = None
        if image is not None:
            path = layout.image_path(item_id, "png")
            (folder / path).parent.mkdir(parents=True, exist_ok=True)
            image.save(folder / path)
        rows.append({"item_id": item_id, "id": row_id, "row": row, "candidate": candidate, "status": status,
                     "path": path, "parent": parent, "variant": variant, "placement": placement,
                     "mode": "outpaint" if variant else "t2i", "width": 64, "height": 48})

    a, b = _source(), _source((30, 200, 30))
    add("aa" + "0" * 30, "a", 0, 0, "written", a)
    add("cc" + "0" * 30, "c", 2, 0, "rejected")
    add("bb" + "0" * 30, "b", 1, 0, "written", b)
    if with_formats:
        add("bb" + "1" * 30, "b", 1, 1, "written", _format(b, "9:16", "center")[0], "bb" + "0" * 30, "9:16",
            "center")
        for k, (variant, placement) in enumerate([("4:5", "center"), ("300x250", "center"), ("16:9", "center"),
                                                  ("9:16", "top")], start=1):
            add(f"a{k}" + "0" * 30, "a", 0, k, "written", _format(a, variant, placement)[0], "aa" + "0" * 30,
                variant, placement)
        add("a9" + "0" * 30, "a", 0, 9, "rejected", None, "aa" + "0" * 30, "1.91:1", "center")
    cols = {f.name: pa.nulls(len(rows), f.type) for f in schema.RESULTS_SCHEMA}
    cols.update({name: pa.array([r[name] for r in rows], schema.RESULTS_SCHEMA.field(name).type) for name in rows[0]})
    pq.write_table(pa.table(cols, schema=schema.RESULTS_SCHEMA), folder / layout.RESULTS)
    write_json({"run_id": "r1", "started_at": "2026-01-01T00:00:00+00:00",
                "config": {"formats": {"sizes": JOB_SIZES}}}, folder, layout.run_record("r1"))
    return folder


@pytest.fixture
def output(tmp_path):
    return _output(tmp_path)


def test_the_strip_is_the_source_then_each_written_format_in_the_jobs_order(output):
    shown = format_strip.panels(output)
    # the row with the most formats; job order, then the style's own; the rejected 1.91:1 left out
    assert [p.name for p in shown] == ["source", "9:16", "16:9", "300x250", "4:5"]
    assert [p.label for p in shown] == ["source  64x48", "9:16  64x112", "16:9  88x48", "300x250  300x250",
                                        "4:5  64x80"]
    assert shown[0].box is None and shown[0].image.getpixel((0, 0)) == SOURCE
    # where the plan put the source: its placement ("top" for the 9:16), an exact size scaled
    assert shown[1].box == canvas_for(64, 48, parse("9:16"), "top").box == (0, 0, 64, 48)
    assert shown[2].box == canvas_for(64, 48, parse("16:9"), "center").box == (8, 0, 72, 48)
    assert shown[3].box == (0, 0, 300, 214)  # the 64x56 canvas, resized to 300x250
    for p in shown[1:]:
        left, top, right, bottom = p.box
        assert p.image.getpixel(((left + right) // 2, (top + bottom) // 2)) == SOURCE, p.name

    strip, placed = format_strip.compose(shown, height=96)
    assert [p.label for p in placed] == [p.label for p in shown]
    lefts = [p.rect[0] for p in placed]
    assert lefts == sorted(lefts)  # side by side, in order
    for panel, p in zip(shown, placed, strict=True):
        left, top, right, bottom = p.rect
        scale = Fraction(96, panel.size[1])
        assert (bottom - top, right - left) == (96, round(panel.size[0] * scale)), p.label
        if panel.box is None:
            assert p.outline is None
            continue
        assert p.outline == (left + round(panel.box[0] * scale), top + round(panel.box[1] * scale),
                             left + round(panel.box[2] * scale), top + round(panel.box[3] * scale))
        ol, ot, orr, ob = p.outline
        assert strip.getpixel((ol, (ot + ob) // 2)) == format_strip.OUTLINE, p.label  # the outline drawn
        assert strip.getpixel(((ol + orr) // 2, (ot + ob) // 2)) == SOURCE, p.label
    # the margins stay as painted: below the 9:16's source, beside the 16:9's
    assert strip.getpixel(((placed[1].rect[0] + placed[1].rect[2]) // 2, placed[1].rect[3] - 3)) == MARGIN
    assert strip.getpixel((placed[2].rect[0] + 2, (placed[2].rect[1] + placed[2].rect[3]) // 2)) == MARGIN
    assert strip.size[1] > 96 + format_strip.LABEL - 1  # a band for the labels under the images


def test_a_row_can_be_chosen_and_the_command_writes_a_small_png(output, tmp_path):
    assert [p.label for p in format_strip.panels(output, "b")] == ["source  64x48", "9:16  64x112"]
    png = tmp_path / "strip.png"
    assert format_strip.main([str(output), str(png), "--id", "b", "--height", "48"]) == 0
    with Image.open(png) as im:
        assert im.height == format_strip.GAP + 48 + format_strip.LABEL and im.mode == "P"


def test_without_a_written_format_it_says_so(tmp_path, capsys):
    (tmp_path / "plain").mkdir()
    out = _output(tmp_path / "plain", with_formats=False)
    with pytest.raises(ValueError, match=r"no written image of any row has a written channel format"):
        format_strip.panels(out)
    with pytest.raises(ValueError, match=r"no written image of row 'c'"):  # c's image was rejected
        format_strip.panels(_output(tmp_path), "c")
    assert format_strip.main([str(out), str(tmp_path / "x.png")]) == 1
    assert "[formats]" in capsys.readouterr().err
