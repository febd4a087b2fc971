"""Whole-word and n-gram masking on packed blocks, vectorized, reproducible like token masking.

Words come from `word_starts` (a per-id table plus: a block's first token, every document
start and every token after a special token begin a word; a special token is a word of its own
that is never chosen).
* whole-word: each word is chosen with probability `probability`, and every token of a chosen
  word is masked. This is token masking's per-token coin moved to the word, so the expected
  share of masked maskable tokens is `probability` exactly, in every block, whatever the word
  lengths (a per-block budget filled in random order, as BERT-wwm does, needs a sort per block
  and skips long words near the end of the budget).
* ngram (SpanBERT-style): any word may start a span; it does with probability q_d, read from
  its first token's hash, and then covers n = 1..max_ngram words, n drawn from the same hash's
  low 16 bits with p(n) ∝ 1/n (DeBERTa's `NGramMaskGenerator` weights: 6/11, 3/11, 2/11 for
  n <= 3). A span is clipped at a segment end (a block end, a document start, a special token:
  no span crosses one) and overlapping spans are unioned. q_d depends on the word's offset d
  from its segment's first word (`span_start_probabilities`): far from a segment start
  (d >= 2N-2) the q solving 1 - prod_k (1 - q P(n > k)) = `probability`, nearer a q_d solved
  offset by offset from q_0 = `probability` (fewer spans can reach those words). So every
  word is covered with probability `probability` (within 0.001 at d = 2N-2..3N-4 for N = 3,
  exactly elsewhere), and so is the expected masked share of maskable tokens. Until issue 13's
  speed work the words were cut into consecutive spans walked from each block's start: the same
  share and span-length weights, but a dozen passes over [blocks, words] arrays (0.34x token).
* 80/10/10 is decided per word: a chosen word is all [MASK], all random ids or all kept. Per
  token (Google's BERT-wwm, the old DataCollatorForWholeWordMask and DeBERTa's mlm_task.py all
  draw per token) a chosen 3-piece word keeps at least one piece visible 27 % of the time,
  which hands the model part of the answer that whole-word masking exists to hide. The token
  shares stay 80/10/10 in expectation either way. Random ids are drawn per token from the real,
  non-special vocabulary, as in token masking.
Every draw is the splitmix64 hash of (seed, epoch, block, position) that token masking uses,
read at a word's first token: bits 63-40 choose the word (start a span), bits 39-16 decide its
kind, the low 16 bits give the span's length. So a block is masked the same way in any batch,
worker or resume. No Python loop runs per token, word or span: past whole-word's passes, ngram
only works on the ~15 % of words that could start a span.
"""

from __future__ import annotations

import math
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
_LOW16 = np.uint64((1 << _LENGTH_BITS) - 1)
_CHOOSE_SHIFT = np.uint64(64 - _BITS)


def ngram_probabilities(max_ngram: int) -> list[float]:
    """p(n) for span lengths n = 1..max_ngram: proportional to 1/n."""
    weights = [1.0 / n for n in range(1, max_ngram + 1)]
    return [w / sum(weights) for w in weights]


def span_start_probabilities(probability: float, max_ngram: int) -> list[float]:
    """[q_0, .., q_{2N-3}, q]: the probability that a word at offset d from its segment's first
    word starts a span (q for every d >= 2N-2), such that a word is covered with probability
    `probability` wherever it sits. A word at offset d is covered unless none of the words
    d - k (k = 0..min(d, N-1)) starts a span longer than k:
    1 - prod_k (1 - q_{d-k} P(n > k)) = probability. Solved for q_d in turn (offset 0: only the
    word itself, q_0 = probability) and, far from a segment start, for one q shared by all N
    terms (bisection; coverage rises with q). The recursion settles towards q in a damped
    oscillation, so switching to q at 2N-2 leaves offsets 2N-2 .. 3N-4 within 0.001 of
    `probability` (N >= 3, any probability; 0.0045 for N = 2) and every other offset exact."""
    n = max_ngram
    if n == 1:
        return [probability]
    longer = np.cumsum(ngram_probabilities(n)[::-1])[::-1]  # P(n > k), k = 0..N-1
    q = [probability]
    for d in range(1, 2 * n - 2):
        reach = float(np.prod([1 - q[d - k] * longer[k] for k in range(1, min(d, n - 1) + 1)]))
        q.append(1 - (1 - probability) / reach)
    low, high = 0.0, 1.0
    for _ in range(60):
        mid = (low + high) / 2
        covered = 1 - float(np.prod(1 - mid * longer))
        low, high = (mid, high) if covered < probability else (low, mid)
    return [min(max(x, 0.0), probability) for x in [*q, high]]


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
        record["span_start_probabilities"] = span_start_probabilities(
            spec.probability, spec.max_ngram
        )
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
        self._length_cuts = [np.uint64(round(c * (1 << _LENGTH_BITS))) for c in cdf]
        self._back = max(2 * max_ngram - 3, 0)  # rows looked back for the offset
        self._around = np.arange(-self._back, max_ngram)  # a span start's neighbours

        high = int(self._t_choose) << (64 - _BITS)  # probability 1: 2**64, beyond uint64
        self._lucky_below = np.uint64(high) if high < 1 << 64 else None
        # ngram: a word at offset d from its segment's start starts a span if its draw (bits
        # 63-40) is below _start_below[min(d, N-1)]; q_0 is `probability`, the whole-word
        # threshold, and no q_d exceeds it, so the candidates are whole-word's chosen words.
        scale = float(1 << _BITS)
        self._start_below = np.array(
            [round(q * scale) for q in span_start_probabilities(spec.probability, max_ngram)],
            dtype=np.uint64,
        )
        assert (self._start_below <= self._t_choose).all()
        # Scratch arrays reused by every call: fresh ones of this size (~0.5 MB for 512 x 128)
        # are page-faulted in anew each time, which measured as much as the masking itself.
        # So one masker serves one thread (each DataLoader worker unpickles its own).
        self._buffers: dict[str, np.ndarray] = {}

    def _buffer(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """Scratch memory kept between calls."""
        size = math.prod(shape)
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
        codes = np.take(self._codes, tokens)  # 2x faster than self._codes[tokens] (uint32 ids)
        starts = word_starts(codes, doc_starts)
        first = np.flatnonzero(starts)  # each word's first token
        special = codes >= SPECIAL  # the SPECIAL bit is the highest; a word of its own each
        # The draw of bits 63-40 below the threshold, compared without a shift.
        below = self._lucky_below
        lucky = np.ones(h.shape, dtype=bool) if below is None else h < below
        lucky &= ~special  # two passes: cheaper than finding the few specials' positions
        # Per word: its first token's draw. A gather, 3x faster than a boolean mask ~90 % True.
        lucky_w = lucky.ravel()[first]
        if self.max_ngram == 1:
            chosen_w = np.flatnonzero(lucky_w)
        else:
            chosen_w = self._choose_spans(lucky_w, h, first, special, doc_starts)
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
        h: np.ndarray,
        first: np.ndarray,
        special: np.ndarray,
        doc_starts: np.ndarray | None,
    ) -> np.ndarray:
        """Indices of the words covered by spans (a word in two spans twice). Candidates are the
        lucky words (draw below q_0); each keeps its start if its draw is below q_d for its
        offset d from the segment start, then covers up to n words, stopping at the next
        segment start. Past the segment starts, every pass runs over the candidates only
        (~15 % of the words)."""
        # Segment starts, as token positions: block starts, document starts, specials and the
        # token after each special.
        hard = self._buffer("hard", h.shape, np.bool_)
        hard[:] = special
        hard[:, 1:] |= special[:, :-1]
        hard[:, 0] = True
        if doc_starts is not None:
            hard.ravel()[doc_starts] = True
        hard = hard.ravel()
        last = first.size - 1
        cand = np.flatnonzero(lucky_w)  # word indices, sorted
        draw = h.ravel()[first[cand]]
        # Each candidate's neighbourhood in one [2N - 1, c] gather: words cand - (N-1) ..
        # cand + (N-1) (clipped to the batch) and whether each begins a segment. A few calls
        # on whole rows: at ~6 K candidates a batch, numpy's per-call overhead is the cost.
        n_max, back = self.max_ngram, self._back
        near = np.add.outer(self._around, cand)
        seg = hard[np.take(first, near, mode="clip")]  # word 0 begins a segment
        # Offset from the segment start, capped at 2N - 2: the nearest segment start at or
        # before the word (row `back` is the word itself; the smaller k, assigned last, wins).
        offset = np.full(cand.size, back + 1)
        for k in range(back, -1, -1):
            offset[seg[back - k]] = k
        # Row k of `take`: word cand + k is covered. The span starts (draw below q_d), is
        # longer than k (its length draw passed the k-th cut) and no word in cand + 1 ..
        # cand + k begins a segment.
        take = np.empty((n_max, cand.size), dtype=bool)
        np.less(draw >> _CHOOSE_SHIFT, self._start_below[offset], out=take[0])
        length_draw = draw & _LOW16
        free = ~seg[back + 1 :]
        if cand.size and cand[-1] + n_max - 1 > last:  # past the batch's last word
            free &= near[back + 1 :] <= last
        for k in range(1, n_max):
            np.greater_equal(length_draw, self._length_cuts[k - 1], out=take[k])
            take[k] &= take[k - 1]
            take[k] &= free[k - 1]
        # Overlapping spans name a word twice: harmless, every later write is idempotent.
        return near[back:][take]


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
