"""Image and prompt moderation: raw scores, term matching rules, label validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.errors import ModelLoadError
from pipeline.models.classifiers import load_embedding_head, load_image_classifier, load_text_classifier
from pipeline.models.clip import load_clip
from pipeline.models.tokenizer import build_clip_tokenizer
from pipeline.stages.moderate import ImageModerator, PromptModerator, PromptVerdict


@pytest.fixture(scope="module")
def nsfw():
    return load_image_classifier("embedded:tiny-nsfw", device="cpu")


@pytest.fixture(scope="module")
def text_classifier(tmp_path_factory):
    """A tiny BERT prompt classifier with the CLIP tokenizer, saved and loaded back."""
    from transformers import BertConfig, BertForSequenceClassification

    folder = tmp_path_factory.mktemp("prompt-classifier")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        net = BertForSequenceClassification(BertConfig(
            vocab_size=49408, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
            intermediate_size=37, max_position_embeddings=77,
            id2label={0: "safe", 1: "NSFW"}, label2id={"safe": 0, "NSFW": 1}))
    net.save_pretrained(folder)
    build_clip_tokenizer(folder).save_pretrained(folder)
    return load_text_classifier(str(folder), device="cpu")


def test_image_scores_are_probabilities_that_vary(nsfw):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    other = [np.full((64, 64, 3), 30, np.uint8), rng.integers(0, 256, (90, 50, 3), np.uint8)]
    scores = ImageModerator(nsfw, ("nsfw",), batch_size=4)(noise + other)
    assert scores.dtype == np.float64 and scores.shape == (8,)
    assert ((scores >= 0) & (scores <= 1)).all()
    assert len(set(scores.round(8))) == 8
    assert (scores[:6] < 0.5).mean() >= 0.8


def test_unsafe_labels_sum_and_validation(nsfw):
    image = [np.zeros((64, 64, 3), np.uint8)]
    both = ImageModerator(nsfw, ("NSFW", "normal"))(image)  # case-insensitive
    np.testing.assert_allclose(both, 1.0, atol=1e-6)
    with pytest.raises(ValueError, match=r"porn.*\['normal', 'nsfw'\]"):
        ImageModerator(nsfw, ("porn",))
    with pytest.raises(ValueError, match="porn"):
        ImageModerator(nsfw, ("nsfw", "porn"))  # a typo must not silently lower scores


@pytest.mark.parametrize("prompt, term", [
    ("NSFW photo", "nsfw"),
    ("ｎｓｆｗ photo", "nsfw"),  # full-width, folded by NFKC
    ("ns\u200bfw photo", "nsfw"),  # zero-width space removed
    ("photo, nsfw!", "nsfw"),
    ("a classic leather bag", None),  # 'ass' only on word boundaries
    ("kick ass shoes", "ass"),
    ("Red   Light district poster", "red light"),  # multi-word, any whitespace
    ("redlight poster", None),
    ("ÜBERGRÖSSE shoes", "Übergröße"),  # casefold: ß == ss
    ("a plain white mug", None),
])
def test_blocked_terms(prompt, term):
    moderator = PromptModerator(("nsfw", "ass", "red light", "Übergröße"))
    [verdict] = moderator([prompt])
    assert verdict == PromptVerdict(blocked=term is not None, term=term, score=None)


def test_no_terms_no_classifier():
    assert PromptModerator(())(["anything", ""]) == [PromptVerdict(False, None, None)] * 2


def test_prompt_classifier_scores(text_classifier):
    moderator = PromptModerator(("nsfw",), text_classifier, unsafe_labels=("nsfw",))
    verdicts = moderator(["a red shoe", "nsfw poster", "word " * 300])  # long: truncated
    assert [v.blocked for v in verdicts] == [False, True, False]
    scores = [v.score for v in verdicts]
    assert all(0.0 <= s <= 1.0 for s in scores) and len(set(scores)) == 3
    with pytest.raises(ValueError, match="unsafe"):
        PromptModerator((), text_classifier, unsafe_labels=("unsafe",))


def test_embedding_head_scores_shared_clip_embeddings(tmp_path):
    import torch
    from safetensors.torch import save_file

    from pipeline.stages.moderate import EmbeddingModerator
    from pipeline.stages.score import ClipScorer

    scorer = ClipScorer(load_clip("embedded:tiny-clip", device="cpu"))
    head = EmbeddingModerator(load_embedding_head("embedded:tiny-clip-head", device="cpu"), ("nsfw",))
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(6)]
    emb = scorer.embed_images(images)
    unsafe = head(emb)
    assert unsafe.shape == (6,) and ((unsafe >= 0) & (unsafe <= 1)).all()
    assert unsafe.std() > 0 and (unsafe < 0.5).all()
    # the scorer gives the same scores from a shared embedding as from pixels
    texts = ["a mug"] * 6
    assert np.allclose(scorer.score(emb, texts), scorer(images, texts))
    with pytest.raises(ValueError, match="not among the model's labels"):
        EmbeddingModerator(load_embedding_head("embedded:tiny-clip-head", device="cpu"), ("gore",))
    save_file({"weight": torch.zeros(3, 32), "bias": torch.zeros(3)}, str(tmp_path / "bad.safetensors"),
              metadata={"labels": '["normal", "nsfw"]'})
    with pytest.raises(ModelLoadError, match="2 labels in the metadata for 3 outputs"):
        load_embedding_head(f"clip-head:{tmp_path / 'bad.safetensors'}", device="cpu")
    with pytest.raises(ModelLoadError, match="must be a .safetensors file"):
        load_embedding_head(f"clip-head:{tmp_path / 'head.bin'}", device="cpu")
