"""Whole-word and n-gram masking on packed blocks, vectorized, reproducible like token masking.

Words come from `word_starts` (a per-id table plus: a block's first token, every document
start and every token after a special token begin a word; a special token is a word of its own
that is never chosen).
* whole-word: each word is chosen with probability `probability`, and every token of a chosen
  word is masked. This is token masking's per-token coin moved to the word, so the expected
  share of masked maskable tokens is `probability` exactly, in every block, whatever the word
  lengths (a per-block budget filled in random order, as BERT-wwm does, needs a sort per block
  and skips long words near the end of the budget).
* ngram: the words of each block are cut into consecutive spans of 1..max_ngram words, lengths
  drawn with p(n) ∝ 1/n (DeBERTa's `NGramMaskGenerator` weights: 6/11, 3/11, 2/11 for n <= 3),
  a span never crossing a document start or a special token; each span is chosen with
  `probability`, so again the expected masked share is `probability`.
* 80/10/10 is decided per word: a chosen word is all [MASK], all random ids or all kept. Per
  token (Google's BERT-wwm, the old DataCollatorForWholeWordMask and DeBERTa's mlm_task.py all
  draw per token) a chosen 3-piece word keeps at least one piece visible 27 % of the time,
  which hands the model part of the answer that whole-word masking exists to hide. The token
  shares stay 80/10/10 in expectation either way. Random ids are drawn per token from the real,
  non-special vocabulary, as in token masking.
Every draw is the splitmix64 hash of (seed, epoch, block, position) that token masking uses,
read at a word's (or span's) first token: bits 63-40 choose, bits 39-16 decide the kind, the
low 16 bits of position k give the length of the block's k-th span. So a block is masked the
same way in any batch, worker or resume. No Python loop runs per token or per word.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from pipeline.train.masking import (
    _BITS,
    _RANDOM_TAG,
    WORD_STRATEGIES,
    Masker,
    MaskingSpec,
    _mix,
    block_keys,
    token_hashes,
)
from pipeline.train.word_starts import SPECIAL, document_starts, id_codes, word_starts

_LENGTH_BITS = 16
_KIND_SHIFT = np.uint64(64 - 2 * _BITS)
_CHOOSE_SHIFT = np.uint64(64 - _BITS)
_LOW24 = np.uint64((1 << _BITS) - 1)


def ngram_probabilities(max_ngram: int) -> list[float]:
    """p(n) for span lengths n = 1..max_ngram: proportional to 1/n."""
    weights = [1.0 / n for n in range(1, max_ngram + 1)]
    return [w / sum(weights) for w in weights]


def describe_masking(spec: MaskingSpec) -> dict[str, Any]:
    """What a run folder records about its masking (RUN/masking.json)."""
    record: dict[str, Any] = {
        "strategy": spec.strategy,
        "probability": spec.probability,
        "mask_fraction": spec.mask_fraction,
        "random_fraction": spec.random_fraction,
    }
    if spec.strategy == "token" or spec.words is None:
        return record | {"decided": "per token"}
    if spec.strategy == "ngram":
        record["max_ngram"] = spec.max_ngram
        record["ngram_probabilities"] = ngram_probabilities(spec.max_ngram)
    rules = "a block's first token, every document start and every token after a special one"
    return record | {
        "decided": "per word",
        "word_rule": spec.words.describe() | {"also_begin_a_word": rules},
    }


class WordMasker(Masker):
    """Masks whole words (max_ngram 1) or spans of up to max_ngram words."""

    def __init__(self, spec: MaskingSpec) -> None:
        super().__init__(spec)
        table = spec.words
        max_ngram = 1 if spec.strategy == "whole-word" else spec.max_ngram
        if table is None or spec.strategy not in WORD_STRATEGIES:
            raise ValueError(f"WordMasker needs a word strategy and table, found {spec.strategy}")
        if table.vocab_size < spec.vocab_size:
            raise ValueError(
                f"word table covers {table.vocab_size} ids, the vocabulary {spec.vocab_size}"
            )
        self.table = table
        self.max_ngram = max_ngram
        starts, breaks = table.arrays()
        n = spec.vocab_size
        self._codes = id_codes(starts[:n], breaks[:n], self._special)
        cdf = np.cumsum(ngram_probabilities(max_ngram))[:-1]
        self._length_cuts = [np.uint16(round(c * (1 << _LENGTH_BITS))) for c in cdf]

    def __call__(
        self,
        tokens: np.ndarray,
        block_index: np.ndarray,
        epoch: np.ndarray,
        seed: int,
        doc_ids: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.asarray(tokens)
        assert tokens.ndim == 2, "tokens must be [blocks, block_size]"
        assert not tokens.size or int(tokens.max()) < self.spec.vocab_size, "id beyond vocab"
        keys = block_keys(seed, np.asarray(epoch), np.asarray(block_index))
        h = token_hashes(keys, tokens.shape[1])
        codes = self._codes[tokens]
        doc_starts = None if doc_ids is None else document_starts(doc_ids)
        starts = word_starts(codes, doc_starts)
        first = np.flatnonzero(starts)  # each word's first token, flat in [b, L]
        hw = h.ravel()[first]
        special_w = (codes.ravel()[first] & SPECIAL).view(bool)
        if self.max_ngram == 1:
            chosen_w = np.flatnonzero(((hw >> _CHOOSE_SHIFT) < self._t_choose) & ~special_w)
        else:
            chosen_w = self._choose_spans(h, starts, first, hw, special_w, doc_starts)
        # Expand the chosen words to their tokens (flat positions in [b, L]).
        clen = _next(first, chosen_w, tokens.size) - first[chosen_w]
        before = np.cumsum(clen)
        flat = np.repeat(first[chosen_w] - (before - clen), clen)
        flat += np.arange(flat.size)
        kind = np.repeat((hw[chosen_w] >> _KIND_SHIFT) & _LOW24, clen)
        flat_tokens = tokens.ravel()
        labels = np.full(tokens.shape, -100, dtype=np.int64)
        labels.ravel()[flat] = flat_tokens[flat]
        inputs = tokens.astype(np.int64)
        out = inputs.ravel()  # a view: inputs is contiguous
        to_mask = kind < self._t_mask
        to_random = ~to_mask & (kind < self._t_random)
        out[flat[to_mask]] = self.spec.mask_id
        if to_random.any():
            where = flat[to_random]
            r = _mix(h.ravel()[where] ^ _RANDOM_TAG) >> np.uint64(32)
            pick = (r * np.uint64(self._candidates.size)) >> np.uint64(32)
            out[where] = self._candidates[pick.astype(np.int64)]
        return inputs, labels

    def _choose_spans(
        self,
        h: np.ndarray,
        starts: np.ndarray,
        first: np.ndarray,
        hw: np.ndarray,
        special_w: np.ndarray,
        doc_starts: np.ndarray | None,
    ) -> np.ndarray:
        """Indices of the words in chosen spans. The k-th span of a block is n_k words long,
        n_k drawn from position k's hash (the cumulative sum of the lengths is the sequential
        walk, done at once); a document start or a special token also begins a span."""
        words_per_block = np.count_nonzero(starts, axis=1)
        block_first_word = np.cumsum(words_per_block) - words_per_block
        draws = _low16(h)  # a strided view of each hash's low 16 bits: no copy
        n = np.ones(h.shape, dtype=np.int16)
        for cut in self._length_cuts:
            n += draws >= cut
        offset = np.cumsum(n, axis=1, dtype=np.int16)  # the first word of span k + 1
        offset -= n  # ... of span k, inside its block
        inside = offset < words_per_block[:, None]
        span_start = np.zeros(first.size, dtype=bool)
        span_start[offset[inside] + np.repeat(block_first_word, inside.sum(axis=1))] = True
        span_start |= special_w
        span_start[1:] |= special_w[:-1]
        if doc_starts is not None:
            span_start |= doc_starts.ravel()[first]
        span_first = np.flatnonzero(span_start)
        chosen = ((hw[span_first] >> _CHOOSE_SHIFT) < self._t_choose) & ~special_w[span_first]
        picked = np.flatnonzero(chosen)
        count = _next(span_first, picked, first.size) - span_first[picked]
        before = np.cumsum(count)
        words = np.repeat(span_first[picked] - (before - count), count)
        words += np.arange(words.size)
        return words


def _next(starts: np.ndarray, picked: np.ndarray, end: int) -> np.ndarray:
    """starts[picked + 1], or `end` past the last: where each picked item ends."""
    following = starts[np.minimum(picked + 1, starts.size - 1)]
    following[picked + 1 == starts.size] = end
    return following


def _low16(h: np.ndarray) -> np.ndarray:
    """The low 16 bits of each uint64 of h [b, L], as a [b, L] uint16 view."""
    low = 0 if sys.byteorder == "little" else 3
    return h.view(np.uint16)[:, low::4]
