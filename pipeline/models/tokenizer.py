"""Offline tokenizers: the real 49408-token CLIP BPE, built from open_clip's bundled file, and a
T5-layout Unigram tokenizer derived from it (T5's own SentencePiece model cannot be downloaded).

Stable Diffusion ships `vocab.json` + `merges.txt` beside its text encoder. We cannot download
them, but open_clip carries the same BPE merges (`bpe_simple_vocab_16e6.txt.gz`). Deriving the
vocabulary exactly as open_clip's `SimpleTokenizer` does gives the same ids as OpenAI's files:
256 byte characters, their `</w>` variants, one token per merge, then the two special tokens.

FLUX and SD3 also read the prompt with a T5 encoder, whose `T5TokenizerFast` is a SentencePiece
Unigram model. `build_t5_tokenizer` makes one with T5's layout (`<pad>` 0, `</s>` 1, `<unk>` 2,
32,100 tokens, `<extra_id_0>` = 32099, model_max_length 512) whose pieces are CLIP's words
("▁shoe" for `shoe</w>`) and word parts: not T5's ids, but the same class, special tokens and a
similar count of tokens per word, so a prompt's length against the T5 window is realistic.
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path

VOCAB_SIZE = 49408
NUM_MERGES = VOCAB_SIZE - 2 * 256 - 2  # 48894
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
T5_SPECIAL = ("<pad>", "</s>", "<unk>")  # ids 0, 1, 2 as in every T5 checkpoint
T5_PIECES = 32000  # T5's SentencePiece size, its special tokens included; then 100 sentinels
T5_EXTRA_IDS = 100


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


def t5_pieces() -> list[tuple[str, float]]:
    """(piece, score) of a T5-layout Unigram vocabulary, deterministic. A word-final CLIP token
    becomes a word-initial piece ("▁shoe"), any other a word part; pieces keep CLIP's merge order
    (most frequent first) and all score about -10, so Viterbi prefers the fewest pieces per word.
    Characters outside the pieces become `<unk>`, as T5 does with most non-Latin scripts."""
    vocab, _ = clip_vocab_and_merges()
    to_byte = {c: b for b, c in bytes_to_unicode().items()}
    pieces: dict[str, None] = {"▁": None}
    for token in list(vocab)[:-2]:  # not CLIP's BOS and EOS
        body = token.removesuffix("</w>")
        try:
            text = bytes(to_byte[c] for c in body).decode("utf-8")
        except UnicodeDecodeError:  # a lone byte of a multi-byte character
            continue
        if text and not any(c.isspace() for c in text):
            pieces.setdefault("▁" + text if token.endswith("</w>") else text, None)
    kept = list(pieces)[: T5_PIECES - len(T5_SPECIAL)]
    return [(t, 0.0) for t in T5_SPECIAL] + [(p, -10.0 - i / len(kept)) for i, p in enumerate(kept)]


def build_t5_tokenizer(folder: Path, model_max_length: int = 512):
    """A transformers T5 tokenizer (`T5TokenizerFast` is its alias), saved into `folder` as
    `tokenizer.json` + `tokenizer_config.json` and loaded back from those files."""
    from transformers import T5Tokenizer

    sentinels = [(f"<extra_id_{i}>", 0.0) for i in reversed(range(T5_EXTRA_IDS))]  # T5's order
    tokenizer = T5Tokenizer(vocab=t5_pieces() + sentinels, extra_ids=T5_EXTRA_IDS,
                            model_max_length=model_max_length)
    tokenizer.save_pretrained(str(folder))
    return T5Tokenizer.from_pretrained(str(folder))
