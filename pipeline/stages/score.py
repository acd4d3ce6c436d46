"""CLIP score of (image, prompt) pairs: `100 · max(cos, 0)`, the torchmetrics convention.

The score says how well an image matches its prompt on a 0..100 scale; which CLIP produced
it (`model_id`) goes into the results, since scores from different CLIPs do not compare.
"""

from __future__ import annotations

import numpy as np

from pipeline.models.clip import ClipBundle


class ClipScorer:
    """Scores batches of pairs; built once per actor, called per batch."""

    def __init__(self, bundle: ClipBundle, batch_size: int = 32):
        self.model = bundle.model
        self.preprocess = bundle.preprocess
        self.tokenizer = bundle.tokenizer
        self.model_id = bundle.model_id
        self.batch_size = batch_size
        first = next(self.model.parameters())
        self.device, self.dtype = first.device, first.dtype

    def __call__(self, images: list[np.ndarray], texts: list[str]) -> np.ndarray:
        """One float64 score per pair; images are HxWx3 uint8 RGB of any size."""
        if len(images) != len(texts):
            raise ValueError(f"{len(images)} images but {len(texts)} texts")
        return self.score(self.embed_images(images), texts)

    def embed_images(self, images: list[np.ndarray]):
        """Normalised image embeddings [n, dim] (float32): one vision pass per image, which
        an embedding-based moderation head can share."""
        import torch
        from PIL import Image

        for i, image in enumerate(images):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"image {i}: expected HxWx3 uint8, got {image.dtype} {image.shape}")
        out = []
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                pixels = torch.stack([self.preprocess(Image.fromarray(im))
                                      for im in images[start:start + self.batch_size]])
                out.append(self.model.encode_image(pixels.to(self.device, self.dtype), normalize=True).float())
        return torch.cat(out) if out else torch.zeros(0)

    def score(self, image_emb, texts: list[str]) -> np.ndarray:
        """`100 · max(cos, 0)` of each image embedding with its text (truncated to the context)."""
        import torch

        if len(image_emb) != len(texts):
            raise ValueError(f"{len(image_emb)} images but {len(texts)} texts")
        scores = np.zeros(len(texts), dtype=np.float64)
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                stop = start + self.batch_size
                tokens = self.tokenizer(list(texts[start:stop]))
                text_emb = self.model.encode_text(tokens.to(self.device), normalize=True).float()
                cos = (image_emb[start:stop] * text_emb).sum(dim=-1)
                scores[start:stop] = (100.0 * cos.clamp(min=0)).double().cpu().numpy()
        return scores
