"""Prompt length against each text encoder's window, without loading torch.

Used by `validate` to warn before a run; the generation stage records `truncated` and
`truncated_by` per candidate by the same rule (`truncated`) whatever happens here. Only the
model's own `tokenizer*/tokenizer.json` files are used (the Rust `tokenizers` library loads one
in milliseconds); without them, no warning is possible.
"""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.storage.paths import EMBEDDED_PREFIX


def truncated(tokens: int, window: int) -> bool:
    """Whether a prompt of `tokens` tokens (its special tokens counted) is cut by a text encoder
    that reads `window`: the rule `validate` warns by and the generate stage records."""
    return tokens > window


def _model_folder(model: str) -> Path:
    if model.startswith(EMBEDDED_PREFIX):
        from pipeline.models.embedded import cache_root, recipe_tag

        name = model.removeprefix(EMBEDDED_PREFIX)
        return cache_root() / f"{name}-{recipe_tag(name)}"
    return Path(model).expanduser()


def _encoders(model: str) -> list[tuple[str, Path, int]]:
    """(encoder, tokenizer folder, window) of each text encoder of `model` whose `tokenizer.json`
    is at hand: every encoder of a known family (CLIP 77, T5 256 or 512), else the first
    tokenizer at its configured `model_max_length`."""
    from pipeline.spec.families import family_of

    root = _model_folder(model)
    family = family_of(model)
    if family is not None:
        return [(f"{e.name}:{e.kind}", root / e.tokenizer, e.window) for e in family.encoders
                if (root / e.tokenizer / "tokenizer.json").is_file()]
    folder = root / "tokenizer"
    config = folder / "tokenizer_config.json"
    try:
        limit = int(json.loads(config.read_text()).get("model_max_length", 77)) if config.is_file() else 77
    except (OSError, ValueError, TypeError, AttributeError, OverflowError):
        return []  # a tokenizer config that cannot be read: loading the model reports it
    if not 0 < limit <= 100_000 or not (folder / "tokenizer.json").is_file():  # "no limit" sentinel in some configs
        return []
    return [("text_encoder", folder, limit)]


def over_limit(prompts: list[str], model: str) -> list[tuple[str, list[int], int]]:
    """(encoder, token count of each prompt, its window) for each text encoder of `model` whose
    tokenizer is at hand (none: no warning is possible).

    Prompts too short in UTF-8 bytes to exceed a window are not tokenized (a BPE or unigram
    token covers at least one byte), so typical manifests cost nothing here.
    """
    found = []
    for encoder, folder, limit in _encoders(model):
        counts = [0] * len(prompts)
        long_ones = [i for i, p in enumerate(prompts) if truncated(len(p.encode("utf-8")) + 2, limit)]
        if long_ones:
            from tokenizers import Tokenizer

            try:
                tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
            except Exception:  # noqa: BLE001 — tokenizers raises plain Exception for a file it cannot parse
                continue
            tok.no_truncation()
            for i, enc in zip(long_ones, tok.encode_batch([prompts[i] for i in long_ones]), strict=True):
                counts[i] = len(enc.ids)
        found.append((encoder, counts, limit))
    return found
