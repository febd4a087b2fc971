"""Which token ids begin a word: a per-id table built once from a tokenizer.json (no torch).

Whole-word and n-gram masking need word boundaries, and packed blocks hold only ids. For the
three subword families in use, word membership is a property of the piece itself:
* WordPiece (BERT): a piece starting with the continuation prefix (`##`) continues the word
  before it; every other piece begins a word.
* SentencePiece / Metaspace (DeBERTa-v3, ALBERT, XLM-R, T5; Unigram or BPE): a piece starting
  with the meta-space `▁` begins a word; others continue it (so "▁world" + "," is one word).
* Byte-level BPE (GPT-2, RoBERTa): a piece starting with `Ġ` (the byte-level space) begins a
  word; a piece made only of whitespace (`Ċ`, `ĠĠ`) stands alone.
Besides `starts`, a second table `breaks` marks ids after which the next token begins a word
whatever it is: special and added tokens (split out before the model sees the text) and
whitespace-only pieces. The masker adds the positional rules: a block's first token and every
stored document start begin a word. A tokenizer with none of these rules is refused: guessing
word boundaries from ids would silently mask fragments.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import UsageError

# bytes_to_unicode() of byte-level BPE maps the whitespace bytes \t \n \v \f \r and space here.
_BYTE_LEVEL_SPACE = "Ġ"
_BYTE_LEVEL_WHITESPACE = frozenset("ĉĊċČčĠ")
# SentencePiece byte fallback pieces of whitespace bytes (Llama-style vocabularies).
_BYTE_FALLBACK_WHITESPACE = frozenset({"<0x09>", "<0x0A>", "<0x0B>", "<0x0C>", "<0x0D>", "<0x20>"})

RULES = {
    "wordpiece": "a piece starting with {marker!r} continues the word before it; others begin one",
    "metaspace": "a piece starting with {marker!r} begins a word; others continue the word before",
    "byte-level": "a piece starting with {marker!r} or made of whitespace only begins a word",
}


@dataclass(frozen=True, kw_only=True)
class WordRule:
    kind: str  # a key of RULES
    marker: str

    def __post_init__(self) -> None:
        if self.kind not in RULES or not self.marker:
            raise ValueError(f"word rule must be one of {sorted(RULES)} with a marker")

    def text(self) -> str:
        return RULES[self.kind].format(marker=self.marker)

    def begins_word(self, piece: str) -> bool:
        if self.kind == "wordpiece":
            return not piece.startswith(self.marker)
        if self.kind == "metaspace":
            return piece.startswith(self.marker) or piece in _BYTE_FALLBACK_WHITESPACE
        return piece.startswith(self.marker) or _is_byte_level_whitespace(piece)

    def breaks_word(self, piece: str) -> bool:
        """The piece ends a word: the next token begins one whatever it is."""
        if self.kind == "byte-level":
            return _is_byte_level_whitespace(piece)
        return self.kind == "metaspace" and piece in _BYTE_FALLBACK_WHITESPACE


@dataclass(frozen=True, kw_only=True)
class WordTable:
    """Per-id facts, as bytes (immutable, hashable, cheap to pickle into DataLoader workers)."""

    rule: WordRule
    model_type: str
    starts: bytes  # starts[i] == 1: id i begins a word
    breaks: bytes  # breaks[i] == 1: the token after id i begins a word

    def __post_init__(self) -> None:
        if len(self.starts) != len(self.breaks) or not self.starts:
            raise ValueError("starts and breaks must be non-empty and of one length")

    @property
    def vocab_size(self) -> int:
        return len(self.starts)

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """(starts, breaks) as read-only bool arrays indexed by token id."""
        return (np.frombuffer(self.starts, dtype=bool), np.frombuffer(self.breaks, dtype=bool))

    def describe(self) -> dict[str, Any]:
        starts, breaks = self.arrays()
        return {
            "tokenizer_model": self.model_type,
            "rule": self.rule.kind,
            "marker": self.rule.marker,
            "text": self.rule.text(),
            "num_ids": self.vocab_size,
            "num_word_start_ids": int(starts.sum()),
            "num_continuation_ids": int((~starts).sum()),
            "num_break_ids": int(breaks.sum()),
        }


def detect_word_rule(tokenizer: dict[str, Any], source: str = "tokenizer.json") -> WordRule:
    """The rule for a parsed tokenizer.json; UsageError naming what was found if there is none."""
    model = tokenizer.get("model") or {}
    model_type = str(model.get("type"))
    pre = _components(tokenizer.get("pre_tokenizer"), "pretokenizers")
    decoders = _components(tokenizer.get("decoder"), "decoders")
    normalizers = _components(tokenizer.get("normalizer"), "normalizers")
    if model_type == "WordPiece":
        return WordRule(kind="wordpiece", marker=model.get("continuing_subword_prefix") or "##")
    for part in pre + decoders:
        if part.get("type") == "Metaspace":
            return WordRule(kind="metaspace", marker=part.get("replacement") or "▁")
    for part in normalizers:  # Llama-style SentencePiece: "▁" put in by the normalizer
        if (part.get("type") == "Prepend" and part.get("prepend") == "▁") or (
            part.get("type") == "Replace" and part.get("content") == "▁"
        ):
            return WordRule(kind="metaspace", marker="▁")
    if any(part.get("type") == "ByteLevel" for part in pre):
        return WordRule(kind="byte-level", marker=_BYTE_LEVEL_SPACE)
    names = "+".join(str(p.get("type")) for p in pre) or "none"
    raise UsageError(
        f"{source}: expected a tokenizer whose pieces show word starts (WordPiece '##', "
        f"SentencePiece/Metaspace '▁' or byte-level BPE 'Ġ'), found model type {model_type} "
        f"with pre-tokenizer {names}; use --masking token with this tokenizer"
    )


def build_word_table(tokenizer: dict[str, Any], vocab_size: int, source: str = "") -> WordTable:
    """Tables over ids 0..vocab_size-1 from a parsed tokenizer.json (ids without a piece: a
    word of their own)."""
    rule = detect_word_rule(tokenizer, source or "tokenizer.json")
    starts = np.ones(vocab_size, dtype=bool)
    breaks = np.zeros(vocab_size, dtype=bool)
    for piece, i in _pieces(tokenizer):
        if 0 <= i < vocab_size:
            starts[i] = rule.begins_word(piece)
            breaks[i] = rule.breaks_word(piece)
    for added in tokenizer.get("added_tokens") or []:
        i = int(added["id"])
        if 0 <= i < vocab_size:  # split out of the text before the model: a word of its own
            starts[i] = breaks[i] = True
    return WordTable(
        rule=rule,
        model_type=str((tokenizer.get("model") or {}).get("type")),
        starts=starts.tobytes(),
        breaks=breaks.tobytes(),
    )


def load_word_table(path: str | Path, vocab_size: int) -> WordTable:
    """The table for a run's tokenizer.json (a `pipeline run` output keeps one)."""
    path = Path(path)
    try:
        parsed = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(
            f"{path}: expected the run's tokenizer.json to find word starts, found it "
            f"unreadable ({exc}); rerun `pipeline run` or use --masking token"
        ) from exc
    return build_word_table(parsed, vocab_size, str(path))


# Per-id codes (uint8 bit flags): one table lookup per token gives all three facts.
START, BREAK, SPECIAL = 1, 2, 4


def id_codes(starts: np.ndarray, breaks: np.ndarray, special: np.ndarray) -> np.ndarray:
    """uint8 per id: START (begins a word), BREAK (the next token begins one), SPECIAL (never
    masked; a word of its own)."""
    codes = (starts | special).astype(np.uint8) * START
    codes |= (breaks | special).astype(np.uint8) * BREAK
    codes |= special.astype(np.uint8) * SPECIAL
    return codes


def document_starts(doc_ids: np.ndarray) -> np.ndarray:
    """bool [b, L] from the dataset's document numbers: a document begins here."""
    starts = np.empty(doc_ids.shape, dtype=bool)
    starts[:, 0] = True
    np.not_equal(doc_ids[:, 1:], doc_ids[:, :-1], out=starts[:, 1:])
    return starts


def word_starts(codes: np.ndarray, doc_starts: np.ndarray | None = None) -> np.ndarray:
    """bool [b, L] from the tokens' codes [b, L]: which positions begin a word. A block's first
    token and every document start (flat positions in [b, L]) do."""
    first = codes & START
    first[:, 1:] |= (codes[:, :-1] & BREAK) >> 1
    first = first.view(bool)  # 0 or 1 in each byte
    if doc_starts is not None:
        first.ravel()[doc_starts] = True
    first[:, 0] = True
    return first


def _components(node: Any, key: str) -> list[dict[str, Any]]:
    """A normalizer/pre-tokenizer/decoder and, for a Sequence, its parts, flattened."""
    if not isinstance(node, dict):
        return []
    parts = [node]
    for child in node.get(key) or []:
        parts += _components(child, key)
    return parts


def _pieces(tokenizer: dict[str, Any]) -> list[tuple[str, int]]:
    vocab = (tokenizer.get("model") or {}).get("vocab") or {}
    if isinstance(vocab, dict):  # WordPiece, BPE, WordLevel: piece -> id
        return [(str(p), int(i)) for p, i in vocab.items()]
    return [(str(entry[0]), i) for i, entry in enumerate(vocab)]  # Unigram: [piece, score]


def _is_byte_level_whitespace(piece: str) -> bool:
    return bool(piece) and all(c in _BYTE_LEVEL_WHITESPACE for c in piece)
