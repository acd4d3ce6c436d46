"""Issue 19's user journey on the shipped demo job (formats, a logo with a headline, a watermark):
run it, see every format of every kept image in the report with its overlay, approve one in the
page, strip a format's metadata by re-encoding it, and get its record back from `identify`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipeline.cli import main
from pipeline.errors import EXIT_OK

ROOT = Path(__file__).resolve().parents[1]


def _overlay_of(path: Path) -> dict | None:
    import c2pa

    store = json.loads(c2pa.Reader(str(path)).json())
    active = store["manifests"][store["active_manifest"]]
    return next((a["data"] for a in active["assertions"] if a["label"] == "com.asset-pipeline.overlay"), None)


@pytest.mark.slow
def test_the_demo_job_from_formats_to_identify(tmp_path, capsys):
    from tests.test_report import _open, browser, export_decisions

    out = tmp_path / "demo"
    # 1. run the shipped job, as a new user does (here without Ray: `make demo` runs it on Ray)
    assert main(["run", str(ROOT / "jobs" / "demo.toml"), "--in-process", "--output", str(out)]) == EXIT_OK
    rows = pq.read_table(out / "results.parquet").to_pylist()
    sizes = ("9:16", "16:9", "300x250")
    sources = [r for r in rows if r["status"] == "written" and r["variant"] is None]
    formats = [r for r in rows if r["variant"] is not None]
    assert len(sources) == 6 and len(formats) == 3 * len(sources)
    assert all(r["status"] == "written" and r["watermark"] == "dwtDctSvd" for r in formats)
    for source in sources:
        mine = {r["variant"]: r for r in formats if r["parent"] == source["item_id"]}
        assert sorted(mine) == sorted(sizes)
        for r in mine.values():  # a studio image's formats carry its overlay, laid out anew
            overlay = _overlay_of(out / r["path"])
            if source["style"] == "studio":
                assert overlay["logo"] == "logo.png" and overlay["headline"] == source["headline"], overlay
            else:
                assert overlay is None
    assert Image.open(out / next(r for r in formats if r["variant"] == "300x250")["path"]).size == (300, 250)

    # 2. the report shows every format beside its source; 3. a reviewer approves one and exports
    assert main(["report", str(out)]) == EXIT_OK
    capsys.readouterr()
    chosen = next(r for r in formats if r["variant"] == "9:16" and r["sku"] == "SHOE-220")
    with browser() as b:
        page, seen = _open(b, out / "report.html", out)
        for source in sources:
            group = page.locator(f'#sheet .source[data-source="{source["item_id"]}"]')
            assert group.locator(".formats .card").count() == 3
            loaded = group.locator(".formats img.shot").evaluate_all(  # lazy images: load them now
                "els => Promise.all(els.map(e => { e.loading = 'eager'; return e.decode().then("
                "() => e.naturalWidth > 0, () => false); }))")
            assert loaded == [True] * 3
        page.locator(f'.card[data-item="{chosen["item_id"]}"] button.d-approve').click()
        decisions = export_decisions(page, tmp_path / "decisions.json")
        assert not seen["errors"]
    assert main(["run", str(ROOT / "jobs" / "demo.toml"), "--in-process", "--output", str(out),
                 "--decisions", str(decisions)]) == EXIT_OK
    after = {r["item_id"]: r for r in pq.read_table(out / "results.parquet").to_pylist()}
    assert after[chosen["item_id"]]["decision"] == "approve" and after[chosen["item_id"]]["path"] == chosen["path"]
    assert main(["verify", str(out)]) == EXIT_OK

    # 4. a platform strips the approved format's metadata by re-encoding it; 5. identify finds it
    stripped = tmp_path / "from-the-feed.jpg"
    Image.open(out / chosen["path"]).convert("RGB").save(stripped, "JPEG", quality=75)
    capsys.readouterr()
    assert main(["identify", str(stripped), "--output", str(out), "--json"]) == EXIT_OK
    found = json.loads(capsys.readouterr().out)
    assert (found["how"], found["collision"]) == ("watermark", False)
    (match,) = found["matches"]
    record = match["record"]
    assert (record["item_id"], record["variant"], record["sku"], record["id"]) == (
        chosen["item_id"], "9:16", "SHOE-220", chosen["id"])
    assert match["original_state"] == "Trusted"
