"""Prompt length against the text encoder's window, without loading torch.

Used by `validate` to warn before a run; the generation stage records `truncated` per
candidate by the same rule (`truncated`) whatever happens here. Only the model's own
`tokenizer/tokenizer.json` is used (the Rust `tokenizers` library loads it in milliseconds);
without one, no warning is possible.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.storage.paths import EMBEDDED_PREFIX


def truncated(tokens: int, window: int) -> bool:
    """Whether a prompt of `tokens` tokens (its special tokens counted) is cut by a text encoder
    that reads `window`: the rule `validate` warns by and the generate stage records."""
    return tokens > window


def _tokenizer_folder(model: str) -> Path | None:
    if model.startswith(EMBEDDED_PREFIX):
        from pipeline.models.embedded import cache_root, recipe_tag

        name = model.removeprefix(EMBEDDED_PREFIX)
        folder = cache_root() / f"{name}-{recipe_tag(name)}" / "tokenizer"
    else:
        folder = Path(model).expanduser() / "tokenizer"
    return folder if (folder / "tokenizer.json").is_file() else None


def over_limit(prompts: list[str], model: str) -> tuple[list[int], int] | None:
    """(token count of each prompt, the window), or None when the tokenizer is not at hand.

    Prompts too short in UTF-8 bytes to exceed the window are not tokenized (a CLIP BPE token
    covers at least one byte), so typical manifests cost nothing here.
    """
    folder = _tokenizer_folder(model)
    if folder is None:
        return None
    config = folder / "tokenizer_config.json"
    try:
        limit = int(json.loads(config.read_text()).get("model_max_length", 77)) if config.is_file() else 77
    except (OSError, ValueError, TypeError, AttributeError, OverflowError):
        return None  # a tokenizer config that cannot be read: loading the model reports it
    if not 0 < limit <= 100_000:  # "no limit" sentinel in some configs
        return None
    counts = [0] * len(prompts)
    long_ones = [i for i, p in enumerate(prompts) if truncated(len(p.encode("utf-8")) + 2, limit)]
    if long_ones:
        from tokenizers import Tokenizer

        try:
            tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception:  # noqa: BLE001 — tokenizers raises plain Exception for a file it cannot parse
            return None
        tok.no_truncation()
        for i, enc in zip(long_ones, tok.encode_batch([prompts[i] for i in long_ones]), strict=True):
            counts[i] = len(enc.ids)
    return counts, limit
