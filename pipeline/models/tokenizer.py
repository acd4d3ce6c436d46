"""An offline CLIP tokenizer: the real 49408-token CLIP BPE, built from open_clip's bundled file.

Stable Diffusion ships `vocab.json` + `merges.txt` beside its text encoder. We cannot download
them, but open_clip carries the same BPE merges (`bpe_simple_vocab_16e6.txt.gz`). Deriving the
vocabulary exactly as open_clip's `SimpleTokenizer` does gives the same ids as OpenAI's files:
256 byte characters, their `</w>` variants, one token per merge, then the two special tokens.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte → printable character map (as in open_clip and OpenAI CLIP)."""
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
          *range(ord("®"), ord("ÿ") + 1)]
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs), strict=True))


def _bpe_file() -> Path:
    import open_clip.tokenizer

    return Path(open_clip.tokenizer.default_bpe())


def clip_vocab_and_merges() -> tuple[dict[str, int], list[str]]:
    """The vocabulary (token → id) and merge list, in open_clip's order."""
    lines = gzip.decompress(_bpe_file().read_bytes()).decode("utf-8").split("\n")
    merges = lines[1 : NUM_MERGES + 1]  # line 0 is a version header
    chars = list(bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [BOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == VOCAB_SIZE, len(vocab)
    return vocab, merges


def write_clip_tokenizer_files(folder: Path) -> None:
    """Write `vocab.json` and `merges.txt` in the layout of `openai/clip-vit-*` repos."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab, merges = clip_vocab_and_merges()
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n",
                                       encoding="utf-8")


def build_clip_tokenizer(folder: Path, model_max_length: int = 77):
    """A transformers `CLIPTokenizer` loaded from files written into `folder`."""
    from transformers import CLIPTokenizer

    write_clip_tokenizer_files(folder)
    return CLIPTokenizer.from_pretrained(str(folder), model_max_length=model_max_length)
