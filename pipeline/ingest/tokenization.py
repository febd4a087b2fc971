"""Load a tokenizer (tokenizer.json or a Hugging Face folder), name it by hash, encode batches.

The identity of a tokenizer is the sha256 of its canonical JSON (keys sorted, no padding or
truncation), so the same tokenizer saved by two tools hashes the same. Encoding always runs
without special tokens; `prefix_ids`/`suffix_ids` are what the tokenizer's own post-processor
puts around one sequence, so `prefix + encode(text, add_special_tokens=False) + suffix` equals
`tokenizer(text)["input_ids"]` and packing can add them itself.
"""

from __future__ import annotations

import hashlib
import importlib
import itertools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from pipeline.errors import DataError, UsageError, brief

# A document longer than this is encoded in whitespace-cut pieces, so that one 20 MB article
# costs bounded memory (the Rust encoding of 1 M characters holds ~0.3 M tokens with offsets).
MAX_PIECE_CHARS = 1_000_000
# Unigram and BPE models cache each word's tokens, but only the first 10,000 distinct words they
# meet (no eviction); WordPiece has no cache. A million words (~260 bytes each when full, so at
# most ~260 MB per worker) cut the 128k Unigram's CPU per token by ~15-25 % on dictwiki, which
# repeats no article (README, "Performance"). The ids are the same: the cache only memoizes.
WORD_CACHE_WORDS = 1_000_000
UINT16_LIMIT = 65_536
_NAMED = {
    "mask": ("[MASK]", "<mask>"),
    "pad": ("[PAD]", "<pad>"),
    "unk": ("[UNK]", "<unk>"),
    "cls": ("[CLS]", "<s>", "<cls>"),
    "sep": ("[SEP]", "</s>", "<sep>"),
}


@dataclass(frozen=True, kw_only=True)
class TokenizerInfo:
    """What shards, the manifest and the trainer need to know about a tokenizer."""

    sha256: str
    vocab_size: int
    dtype: str
    prefix_ids: tuple[int, ...]
    suffix_ids: tuple[int, ...]
    special_ids: dict[str, int | None]
    all_special_ids: tuple[int, ...]

    def __post_init__(self) -> None:
        if self.dtype not in ("uint16", "uint32"):
            raise ValueError(f"dtype must be uint16 or uint32, found {self.dtype}")
        if self.dtype == "uint16" and self.vocab_size > UINT16_LIMIT:
            raise ValueError("uint16 cannot hold this vocabulary")


def load_tokenizer(path: str) -> Tokenizer:
    """A `tokenizers.Tokenizer` from a tokenizer.json or a local HF model folder, no padding."""
    p = Path(path)
    if not p.exists():
        raise UsageError(
            f"--tokenizer {path}: expected a tokenizer.json or a model folder, found nothing "
            "there; pass the path of a local folder with tokenizer.json (no downloads are made)"
        )
    if p.is_dir():
        tok = _load_folder(p)
    else:
        try:
            tok = Tokenizer.from_file(str(p))
        except Exception as exc:
            raise UsageError(
                f"--tokenizer {path}: expected a Hugging Face tokenizer.json, found a file "
                f"that does not load ({brief(exc, 120)}); pass a tokenizer.json or its folder"
            ) from exc
    tok.no_padding()
    tok.no_truncation()
    return tok


def _load_folder(folder: Path) -> Tokenizer:
    if (folder / "tokenizer.json").is_file():
        return load_tokenizer(str(folder / "tokenizer.json"))
    if not any(folder.glob("*.model")):
        raise UsageError(
            f"--tokenizer {folder}: expected tokenizer.json (or a SentencePiece *.model) in "
            "the folder, found neither; pass a Hugging Face model folder or a tokenizer.json"
        )
    missing = [pip for module, pip in _CONVERTERS if not _importable(module)]
    if missing:
        # Checked first: without them transformers falls back to a misleading "tiktoken is
        # required" error (transformers 5.x).
        raise UsageError(
            f"--tokenizer {folder}: expected the packages that convert a SentencePiece model "
            f"(transformers, sentencepiece, protobuf), found {', '.join(missing)} missing; run "
            "`pip install '.[spm]'` (the train extra includes it), or save the folder once with "
            "tokenizer.save_pretrained() to get tokenizer.json"
        )
    from transformers import AutoTokenizer

    try:
        hf = AutoTokenizer.from_pretrained(str(folder), use_fast=True)
        return Tokenizer.from_str(hf.backend_tokenizer.to_str())
    except Exception as exc:  # transformers raises many kinds here
        raise UsageError(
            f"--tokenizer {folder}: expected a SentencePiece model that transformers can convert "
            f"to a fast tokenizer, found one it cannot load ({brief(exc)}); check the folder "
            "(tokenizer_config.json, *.model) or pass a tokenizer.json"
        ) from exc


_CONVERTERS = (
    ("transformers", "transformers"),
    ("sentencepiece", "sentencepiece"),
    ("google.protobuf", "protobuf"),
)


def _importable(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def canonical_json(tok: Tokenizer) -> str:
    return json.dumps(
        json.loads(tok.to_str()), sort_keys=True, ensure_ascii=False, separators=(",", ":")
    )


def describe_tokenizer(
    tok: Tokenizer, dtype: str = "auto", source: str = "", canonical: str | None = None
) -> TokenizerInfo:
    """Facts about `tok`; `canonical` is its canonical_json() when the caller has it already
    (serializing DeBERTa-v3's 8.5 MB tokenizer.json costs ~0.5 s)."""
    vocab_size = tok.get_vocab_size(with_added_tokens=True)
    vocab = tok.get_vocab(with_added_tokens=True)
    if vocab:
        vocab_size = max(vocab_size, max(vocab.values()) + 1)
    if dtype == "auto":
        dtype = "uint16" if vocab_size <= UINT16_LIMIT else "uint32"
    elif dtype == "uint16" and vocab_size > UINT16_LIMIT:
        raise UsageError(
            f"--dtype uint16 with tokenizer {source or '?'}: expected a vocabulary of at most "
            f"{UINT16_LIMIT} ids, found {vocab_size}; use --dtype uint32 or auto"
        )
    prefix, suffix = _special_frame(tok)
    special = {name: _find_named(tok, vocab, names) for name, names in _NAMED.items()}
    if len(prefix) == 1:
        special["cls"] = prefix[0]
    if len(suffix) == 1:
        special["sep"] = suffix[0]
    added = tok.get_added_tokens_decoder()
    all_special = sorted({i for i, t in added.items() if t.special} | set(prefix) | set(suffix))
    return TokenizerInfo(
        sha256=hashlib.sha256((canonical or canonical_json(tok)).encode()).hexdigest(),
        vocab_size=vocab_size,
        dtype=dtype,
        prefix_ids=tuple(prefix),
        suffix_ids=tuple(suffix),
        special_ids=special,
        all_special_ids=tuple(all_special),
    )


def _special_frame(tok: Tokenizer) -> tuple[list[int], list[int]]:
    """Ids the post-processor puts before and after one sequence."""
    for probe in ("a", "hello world", "0"):
        bare = tok.encode(probe, add_special_tokens=False).ids
        full = tok.encode(probe, add_special_tokens=True).ids
        if not bare:
            continue
        for start in range(len(full) - len(bare) + 1):
            if full[start : start + len(bare)] == bare:
                return full[:start], full[start + len(bare) :]
    return [], []


def _find_named(tok: Tokenizer, vocab: dict[str, int], names: tuple[str, ...]) -> int | None:
    for name in names:
        if name in vocab:
            return vocab[name]
    return None


def widen_word_cache(tok: Tokenizer, words: int) -> bool:
    """Let `tok`'s model cache the tokens of up to `words` distinct words (0: no cache).
    Returns False, changing nothing, for a model without a cache (WordPiece, WordLevel)."""
    resize = getattr(tok.model, "_resize_cache", None)
    if resize is None:
        return False
    resize(words)
    return True


class DocumentEncoder:
    """Encodes batches of texts to one flat id array plus per-document lengths."""

    def __init__(
        self, tok: Tokenizer, info: TokenizerInfo, word_cache: int = WORD_CACHE_WORDS
    ) -> None:
        """Takes over `tok`: its word cache is resized to `word_cache` words."""
        self._tok = tok
        self._info = info
        widen_word_cache(tok, word_cache)

    @property
    def info(self) -> TokenizerInfo:
        return self._info

    def encode(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(ids, lengths): ids of all texts back to back (uint32), and each text's count."""
        if any(len(t) > MAX_PIECE_CHARS for t in texts):
            return self._encode_long(texts)
        encodings = self._tok.encode_batch_fast(texts, add_special_tokens=False)
        per_doc = [e.ids for e in encodings]
        lengths = np.fromiter(map(len, per_doc), dtype=np.int64, count=len(per_doc))
        flat = itertools.chain.from_iterable(per_doc)
        ids = np.fromiter(flat, dtype=np.uint32, count=int(lengths.sum()))
        self._check_range(ids)
        return ids, lengths

    def _encode_long(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
        all_ids: list[np.ndarray] = []
        lengths = np.zeros(len(texts), dtype=np.int64)
        for k, text in enumerate(texts):
            for piece in split_long_text(text, MAX_PIECE_CHARS):
                ids, n = self.encode([piece])
                all_ids.append(ids)
                lengths[k] += int(n[0])
        ids = np.concatenate(all_ids) if all_ids else np.zeros(0, np.uint32)
        return ids, lengths

    def _check_range(self, ids: np.ndarray) -> None:
        if ids.size and int(ids.max()) >= self._info.vocab_size:
            raise DataError(
                f"tokenizer {self._info.sha256[:12]}: expected ids below its vocabulary size "
                f"{self._info.vocab_size}, found {int(ids.max())}; the tokenizer.json is "
                "inconsistent, re-save it with the tokenizers library"
            )


def split_long_text(text: str, max_chars: int) -> list[str]:
    """Cut text into pieces of at most max_chars, at whitespace where there is any.

    Each cut keeps the whitespace at the start of the next piece, so the pieces join back to
    the text exactly; tokenizers that split on whitespace then give the same tokens.
    """
    pieces = []
    start = 0
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end))
        if cut <= start:
            cut = end
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces
