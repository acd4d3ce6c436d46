"""CLIP score on the embedded tiny CLIP: range, determinism, sensitivity, any image size."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.models.clip import load_clip
from pipeline.stages.score import ClipScorer


@pytest.fixture(scope="module")
def scorer():
    return ClipScorer(load_clip("embedded:tiny-clip", None, device="cpu"), batch_size=3)


def _images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(n)]


def test_scores_in_range_and_deterministic(scorer):
    images = _images(4) + [np.full((64, 64, 3), 200, np.uint8)]
    texts = ["a red shoe", "a blue bag", "白い靴", "Größe 👟", "a red shoe"]
    first, second = scorer(images, texts), scorer(images, texts)
    assert first.dtype == np.float64 and first.shape == (5,)
    assert ((first >= 0) & (first <= 100)).all()
    np.testing.assert_array_equal(first, second)
    assert scorer.model_id == "embedded:tiny-clip"


def test_scores_differ_between_images_and_texts(scorer):
    images = _images(3)
    by_image = scorer(images, ["a red shoe"] * 3)
    assert len(set(by_image.round(6))) == 3
    by_text = scorer([images[0]] * 2, ["a red shoe", "a blue bag"])
    assert by_text[0] != by_text[1]


def test_any_size_and_long_text(scorer):
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((100, 40, 3), (7, 300, 3))]
    scores = scorer(images, ["word " * 500, "a shoe"])  # truncated to the context, no error
    assert ((scores >= 0) & (scores <= 100)).all()
    batch_of_one = scorer(images[:1], ["word " * 500])
    np.testing.assert_allclose(batch_of_one, scores[:1], atol=1e-4)


def test_bad_inputs(scorer):
    assert scorer([], []).shape == (0,)
    with pytest.raises(ValueError, match="2 images but 1 texts"):
        scorer(_images(2), ["a"])
    with pytest.raises(ValueError, match="image 0"):
        scorer([np.zeros((8, 8, 3), np.float32)], ["a"])
