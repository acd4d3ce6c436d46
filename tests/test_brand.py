"""Brand consistency: how alike each style's written images are, from the CLIP image embeddings
the run keeps (`_embeddings/`), so the figure needs no second pass over the images."""

import itertools
import json

import numpy as np
import pyarrow.parquet as pq
from PIL import Image

from pipeline.run.job import run_job
from pipeline.spec.load import load_job
from tests.helpers import committed_part, write_job

ROWS = {"id": ["s1", "s2", "s3", "b1", "b2", "n1"], "prompt": ["a mug", "a shoe", "a lamp", "a cup", "a hat", "a pen"],
        "style": ["studio", "studio", "studio", "brand", "brand", None]}
FAST = "[generate]\nsteps = 2\nwidth = 64\nheight = 64\nbatch_size = 4\n"


def test_each_styles_written_images_are_compared_by_their_kept_embeddings(tmp_path):
    from pipeline.models.clip import load_clip
    from pipeline.stages.score import ClipScorer

    # The brand style has a reference image: its images are also compared with it.
    tmp_path.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(tmp_path / "ref.png")
    styles = {"style": ["studio", "brand"], "prompt_template": ["{prompt}, studio photo", "{prompt}, brand look"],
              "reference_image": [None, "ref.png"]}
    cfg = load_job(write_job(tmp_path, ROWS, styles=styles, extra=FAST, num_candidates=2, keep=1))
    report = run_job(cfg, backend="in-process")
    out = report.output_dir
    written = [r for r in pq.read_table(out / "results.parquet").to_pylist() if r["status"] == "written"]
    sidecar = committed_part(out, "embeddings").to_pylist()  # the sidecars, consolidated
    assert len(sidecar) == 12 and {len(r["clip_embedding"]) for r in sidecar} == {len(sidecar[0]["clip_embedding"])}
    # The figure, recomputed the slow way: embed the written files again, average every pair.
    scorer = ClipScorer(load_clip(cfg.models.clip, cfg.models.clip_pretrained, device="cpu"))
    expected, reference = {}, {}
    ref = scorer.embed_images([np.asarray(Image.open(tmp_path / "ref.png").convert("RGB"))]).numpy()[0]
    for style, group in itertools.groupby(sorted(written, key=lambda r: r["style"] or ""),
                                          key=lambda r: r["style"] or "(no style)"):
        pixels = [np.asarray(Image.open(out / r["path"]).convert("RGB")) for r in group]
        e = scorer.embed_images(pixels).numpy().astype(np.float64)
        pairs = [e[i] @ e[j] for i, j in itertools.combinations(range(len(e)), 2)]
        expected[style] = (len(e), float(np.mean(pairs)) if pairs else None)
        if style == "brand":
            reference[style] = float(np.mean(e @ ref))
    figures = json.loads((out / "summary.json").read_text())["brand_consistency"]
    assert set(figures) == {"studio", "brand", "(no style)"}
    for style, (n, mean) in expected.items():
        assert figures[style]["images"] == n
        if mean is None:
            assert figures[style]["mean_pairwise_cosine"] is None
        else:
            assert abs(figures[style]["mean_pairwise_cosine"] - mean) < 1e-3
        if style in reference:
            assert abs(figures[style]["reference_similarity"] - reference[style]) < 1e-3
        else:
            assert "reference_similarity" not in figures[style]  # no reference image: no figure
    assert report.summary["brand_consistency"] == figures
