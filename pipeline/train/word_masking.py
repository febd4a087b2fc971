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
    _GOLDEN,
    _M1,
    _M2,
    _POSITION,
    _RANDOM_TAG,
    WORD_STRATEGIES,
    Masker,
    MaskingSpec,
    _mix,
    block_keys,
)
from pipeline.train.word_starts import SPECIAL, document_starts, id_codes, word_starts

_LENGTH_BITS = 16
_KIND_SHIFT = np.uint64(64 - 2 * _BITS)
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
        high = int(self._t_choose) << (64 - _BITS)  # probability 1: 2**64, beyond uint64
        self._lucky_below = np.uint64(high) if high < 1 << 64 else None
        # Scratch arrays reused by every call: fresh ones of this size (~0.5 MB for 512 x 128)
        # are page-faulted in anew each time, which measured as much as the masking itself.
        # So one masker serves one thread (each DataLoader worker unpickles its own).
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """Scratch memory kept between calls."""
        size = int(np.prod(shape))
        buf = self._buffers.get(name)
        if buf is None or buf.size < size:
            buf = self._buffers[name] = np.empty(size, dtype)
        return buf[:size].reshape(shape)

    def __getstate__(self) -> dict[str, Any]:
        return self.__dict__ | {"_buffers": {}}  # scratch memory is not worth pickling

    def __call__(
        self,
        tokens: np.ndarray,
        block_index: np.ndarray,
        epoch: np.ndarray,
        seed: int,
        doc_ids: np.ndarray | None = None,
        doc_starts: np.ndarray | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels) like token masking; document starts come as flat positions in
        [b, L] (`doc_starts`, cheap) or as the dataset's document numbers (`doc_ids`)."""
        tokens = np.asarray(tokens)
        assert tokens.ndim == 2, "tokens must be [blocks, block_size]"
        assert not tokens.size or int(tokens.max()) < self.spec.vocab_size, "id beyond vocab"
        if doc_starts is None and doc_ids is not None:
            doc_starts = np.flatnonzero(document_starts(doc_ids))
        keys = block_keys(seed, np.asarray(epoch), np.asarray(block_index))
        h = self._buffer("hash", tokens.shape, np.uint64)
        _token_hashes(keys, h, self._buffer("spare", tokens.shape, np.uint64))
        codes = self._codes[tokens]
        starts = word_starts(codes, doc_starts)
        flat_starts = starts.ravel()
        first = np.flatnonzero(flat_starts)  # each word's first token
        specials = np.flatnonzero(codes & SPECIAL)  # few: a word of their own each
        # The draw of bits 63-40 below the threshold, compared without a shift.
        below = self._lucky_below
        lucky = np.ones(h.shape, dtype=bool) if below is None else h < below
        lucky.ravel()[specials] = False
        lucky_w = lucky.ravel()[flat_starts]  # per word: its first token's draw
        if self.max_ngram == 1:
            chosen_w = np.flatnonzero(lucky_w)
        else:
            chosen_w = self._choose_spans(lucky_w, _low16(h), starts, first, specials, doc_starts)
        # Expand the chosen words to their tokens (flat positions in [b, L]).
        chosen_first = first[chosen_w]
        clen = _next(first, chosen_w, tokens.size) - chosen_first
        before = np.cumsum(clen)
        flat = np.repeat(chosen_first - (before - clen), clen)
        flat += np.arange(flat.size)
        flat_h = h.ravel()
        kind = np.repeat((flat_h[chosen_first] >> _KIND_SHIFT) & _LOW24, clen)
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
            r = _mix(flat_h[where] ^ _RANDOM_TAG) >> np.uint64(32)
            pick = (r * np.uint64(self._candidates.size)) >> np.uint64(32)
            out[where] = self._candidates[pick.astype(np.int64)]
        return inputs, labels

    def _choose_spans(
        self,
        lucky_w: np.ndarray,
        draws: np.ndarray,
        starts: np.ndarray,
        first: np.ndarray,
        specials: np.ndarray,
        doc_starts: np.ndarray | None,
    ) -> np.ndarray:
        """Indices of the words in chosen spans. The k-th span of a block is n_k words long,
        n_k drawn from position k's hash (the cumulative sum of the lengths is the sequential
        walk, done at once); a document start or a special token also begins a span."""
        words_per_block = np.count_nonzero(starts, axis=1)
        block_first_word = np.cumsum(words_per_block) - words_per_block
        spans = (starts.shape[0], int(words_per_block.max()))  # a block has at most that many
        n = self._buffer("lengths", spans, np.int32)  # int32: numpy's int16 cumsum is 3x slower
        n.fill(1)
        for cut in self._length_cuts:
            n += draws[:, : spans[1]] >= cut
        offset = self._buffer("offsets", spans, np.int32)
        np.cumsum(n, axis=1, out=offset)  # the first word of span k + 1
        offset -= n  # ... of span k, inside its block
        inside = offset < words_per_block[:, None]
        offset += block_first_word[:, None].astype(np.int32)  # ... among all words
        span_start = np.zeros(first.size, dtype=bool)
        span_start[offset.ravel()[inside.ravel()]] = True
        # A special token is a span of its own; a document start begins one.
        hard = np.zeros(starts.size, dtype=bool)
        hard[specials] = True
        hard[specials[specials + 1 < starts.size] + 1] = True
        if doc_starts is not None:
            hard[doc_starts] = True
        span_start |= hard[starts.ravel()]
        span_first = np.flatnonzero(span_start)
        chosen = lucky_w[span_first]  # a special token is a span of its own, never lucky
        picked = np.flatnonzero(chosen)
        count = _next(span_first, picked, first.size) - span_first[picked]
        before = np.cumsum(count)
        words = np.repeat(span_first[picked] - (before - count), count)
        words += np.arange(words.size)
        return words


def _token_hashes(keys: np.ndarray, out: np.ndarray, spare: np.ndarray) -> None:
    """`token_hashes(keys, L)` into `out` [b, L], in place with one scratch buffer: the same
    values without a fresh array per step (each costs page faults at this size)."""
    positions = np.arange(out.shape[1], dtype=np.uint64) * _POSITION
    np.bitwise_xor(keys[:, None], positions[None, :], out=out)
    out += _GOLDEN
    for shift, multiplier in ((30, _M1), (27, _M2), (31, None)):
        np.right_shift(out, np.uint64(shift), out=spare)
        out ^= spare
        if multiplier is not None:
            out *= multiplier


def _next(starts: np.ndarray, picked: np.ndarray, end: int) -> np.ndarray:
    """starts[picked + 1], or `end` past the last: where each picked item ends."""
    following = starts[np.minimum(picked + 1, starts.size - 1)]
    following[picked + 1 == starts.size] = end
    return following


def _low16(h: np.ndarray) -> np.ndarray:
    """The low 16 bits of each uint64 of h [b, L], as a [b, L] uint16 view."""
    low = 0 if sys.byteorder == "little" else 3
    return h.view(np.uint16)[:, low::4]
