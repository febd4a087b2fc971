"""Dynamic MLM masking, vectorized and reproducible from (seed, epoch, block index).

Rules (BERT's, as in `DataCollatorForLanguageModeling`): each non-special token is chosen with
probability `probability`; a chosen token becomes the mask token with probability
`mask_fraction`, a random token with probability `random_fraction`, and stays as it is
otherwise; labels hold the original id at chosen positions and -100 elsewhere. Two differences
on purpose: random replacements are drawn only from real, non-special vocabulary ids (ids below
the tokenizer's vocab size: DeBERTa-v3's embedding has 128,100 rows for 128,001 tokens), and
every decision comes from a counter-based hash (splitmix64) of (seed, epoch, block, position)
instead of a stateful generator. A block is therefore masked the same way whatever batch,
worker, rank or resume it is read in, and no RNG state needs saving.

`--masking whole-word` and `--masking ngram` (`WordMasker`, pipeline/train/word_masking.py) mask
whole words or spans of words with the same hash; word starts come from the tokenizer
(pipeline/train/word_starts.py). Token masking, the default, is what this module does alone.

`MLMCollator` is the thin edge that turns blocks into torch tensors (torch imported lazily):
it takes the dataset's `BlockBatch` (fast path) or a list of `{"input_ids", "block_index"}`
examples (the `transformers.Trainer` path).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.format.manifest import TokenizerRecord
from pipeline.train.word_starts import WordTable

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_POSITION = np.uint64(0xD6E8FEB86659FD93)
_RANDOM_TAG = np.uint64(0x2545F4914F6CDD1D)
_BITS = 24  # resolution of the probabilities: 1 / 16.7 M
STRATEGIES = ("token", "whole-word", "ngram")
WORD_STRATEGIES = STRATEGIES[1:]


@dataclass(frozen=True, kw_only=True)
class MaskingSpec:
    mask_id: int
    vocab_size: int  # real token ids are below this; random replacements come from them
    special_ids: tuple[int, ...]
    probability: float = 0.15
    mask_fraction: float = 0.8
    random_fraction: float = 0.1
    strategy: str = "token"
    max_ngram: int = 3  # ngram: spans of 1..max_ngram words
    words: WordTable | None = None  # whole-word, ngram: which ids begin a word

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ValueError(f"masking strategy must be one of {STRATEGIES}, found {self.strategy}")
        if self.strategy in WORD_STRATEGIES and self.words is None:
            raise ValueError(f"{self.strategy} masking needs a word table")
        if self.max_ngram < 1:
            raise ValueError(f"max_ngram must be at least 1, found {self.max_ngram}")
        if not 0.0 < self.probability <= 1.0:
            raise ValueError(f"masking probability must be in (0, 1], found {self.probability}")
        if self.mask_fraction < 0 or self.random_fraction < 0:
            raise ValueError("mask and random fractions must be >= 0")
        if self.mask_fraction + self.random_fraction > 1.0 + 1e-9:
            raise ValueError(
                f"mask fraction {self.mask_fraction} + random fraction {self.random_fraction} "
                "exceed 1; the rest is the share of chosen tokens kept unchanged"
            )
        if not 0 <= self.mask_id < self.vocab_size:
            raise ValueError(f"mask id {self.mask_id} is not below vocab size {self.vocab_size}")

    @classmethod
    def from_manifest(cls, tokenizer: TokenizerRecord, **options: Any) -> MaskingSpec:
        return cls(
            mask_id=int(tokenizer.special_ids["mask"]),
            vocab_size=tokenizer.vocab_size,
            special_ids=tokenizer.all_special_ids,
            **options,
        )


class Masker:
    """Applies a MaskingSpec; holds the lookup tables built once from it."""

    def __init__(self, spec: MaskingSpec) -> None:
        self.spec = spec
        self._special = np.zeros(spec.vocab_size, dtype=bool)
        specials = [i for i in spec.special_ids if 0 <= i < spec.vocab_size]
        self._special[specials] = True
        self._candidates = np.flatnonzero(~self._special).astype(np.int64)
        scale = float(1 << _BITS)
        self._t_choose = np.uint64(round(spec.probability * scale))
        self._t_mask = np.uint64(round(spec.mask_fraction * scale))
        self._t_random = np.uint64(round((spec.mask_fraction + spec.random_fraction) * scale))

    def __call__(
        self, tokens: np.ndarray, block_index: np.ndarray, epoch: np.ndarray, seed: int
    ) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, labels), both int64 [b, L], for blocks named by (epoch, block_index)."""
        tokens = np.asarray(tokens)
        assert tokens.ndim == 2, "tokens must be [blocks, block_size]"
        assert not tokens.size or int(tokens.max()) < self.spec.vocab_size, "id beyond vocab"
        keys = block_keys(seed, np.asarray(epoch), np.asarray(block_index))
        h = token_hashes(keys, tokens.shape[1])
        chosen = (h >> np.uint64(64 - _BITS)) < self._t_choose
        chosen &= ~self._special[tokens]
        labels = np.where(chosen, tokens, np.int64(-100))
        inputs = tokens.astype(np.int64)
        flat = np.flatnonzero(chosen)  # positions in the raveled [b, L] arrays
        hc = h.ravel()[flat]
        kind = (hc >> np.uint64(64 - 2 * _BITS)) & np.uint64((1 << _BITS) - 1)
        to_mask = kind < self._t_mask
        to_random = ~to_mask & (kind < self._t_random)
        out = inputs.ravel()  # a view: inputs is contiguous
        out[flat[to_mask]] = self.spec.mask_id
        if to_random.any():
            r = _mix(hc[to_random] ^ _RANDOM_TAG) >> np.uint64(32)
            pick = (r * np.uint64(self._candidates.size)) >> np.uint64(32)
            out[flat[to_random]] = self._candidates[pick.astype(np.int64)]
        return inputs, labels


def make_masker(spec: MaskingSpec) -> Masker:
    """The masker for the spec's strategy."""
    if spec.strategy == "token":
        return Masker(spec)
    from pipeline.train.word_masking import WordMasker  # it builds on this module

    return WordMasker(spec)


def _mix(x: np.ndarray) -> np.ndarray:
    """splitmix64's finalizer, elementwise on uint64 (wraps modulo 2**64)."""
    x = x + _GOLDEN
    x ^= x >> np.uint64(30)
    x *= _M1
    x ^= x >> np.uint64(27)
    x *= _M2
    x ^= x >> np.uint64(31)
    return x


def block_keys(seed: int, epoch: np.ndarray, block_index: np.ndarray) -> np.ndarray:
    """One 64-bit key per block, from (seed, epoch, block index)."""
    base = _mix(np.array([seed], dtype=np.uint64))
    return _mix(_mix(base ^ epoch.astype(np.uint64)) ^ block_index.astype(np.uint64))


def token_hashes(keys: np.ndarray, length: int) -> np.ndarray:
    """[b, length] uint64: a hash per (block key, position)."""
    positions = np.arange(length, dtype=np.uint64) * _POSITION
    return _mix(keys[:, None] ^ positions[None, :])


def doc_attention_bias(doc_ids: Any) -> Any:
    """Additive [b, 1, L, L] float mask: 0 within a document, the dtype's minimum across.

    The 4-D additive form is what BERT-family models in transformers 5.x pass through unchanged
    (eager and sdpa attention alike); see `pipeline.train.models.DOC_ATTENTION_MODELS`.
    """
    import torch

    same = doc_ids[:, :, None] == doc_ids[:, None, :]
    zero = torch.zeros((), dtype=torch.float32)
    low = torch.tensor(torch.finfo(torch.float32).min)
    return torch.where(same, zero, low)[:, None]


class MLMCollator:
    """Blocks -> {"input_ids", "labels"[, "attention_mask"]} as torch int64 tensors."""

    def __init__(
        self,
        spec: MaskingSpec,
        *,
        seed: int,
        doc_attention: bool = False,
        with_keys: bool = False,
    ) -> None:
        self.masker = make_masker(spec)
        self.by_words = spec.strategy in WORD_STRATEGIES  # needs the document starts
        self.seed = seed
        self.doc_attention = doc_attention
        self.with_keys = with_keys
        self._calls = 0  # names examples that arrive without a block index (Trainer path)

    def __call__(self, batch: Any) -> dict[str, Any]:
        import torch

        if isinstance(batch, list):
            batch = self._from_examples(batch)
        if self.by_words:
            inputs, labels = self.masker(
                batch.tokens, batch.block_index, batch.epoch, self.seed,
                doc_ids=batch.doc_ids, doc_starts=batch.doc_starts,
            )  # fmt: skip
        else:
            inputs, labels = self.masker(batch.tokens, batch.block_index, batch.epoch, self.seed)
        out = {"input_ids": torch.from_numpy(inputs), "labels": torch.from_numpy(labels)}
        if self.doc_attention:
            if batch.doc_ids is None:
                raise ValueError("doc_attention needs a dataset opened with with_doc_ids=True")
            out["attention_mask"] = doc_attention_bias(torch.from_numpy(batch.doc_ids))
        if self.with_keys:
            out["block_index"] = torch.from_numpy(batch.block_index)
            out["epoch"] = torch.from_numpy(batch.epoch)
        return out

    def _from_examples(self, examples: list[dict[str, Any]]) -> Any:
        from pipeline.train.dataset import BlockBatch

        tokens = np.stack([np.asarray(e["input_ids"]) for e in examples])
        if all("block_index" in e for e in examples):
            index = np.array([int(e["block_index"]) for e in examples], dtype=np.int64)
            epoch = np.array([int(e.get("epoch", 0)) for e in examples], dtype=np.int64)
        else:
            # transformers.Trainer drops unknown columns by default: number the examples by
            # call instead (reproducible per collator, not per block).
            index = np.arange(len(examples), dtype=np.int64)
            epoch = np.full(len(examples), (1 << 40) + self._calls, dtype=np.int64)
        self._calls += 1
        doc_ids = doc_starts = None
        if self.doc_attention or (self.by_words and all("doc_ids" in e for e in examples)):
            doc_ids = np.stack([np.asarray(e["doc_ids"]) for e in examples])
        if self.by_words and all("doc_starts" in e for e in examples):
            length = tokens.shape[1]
            doc_starts = np.concatenate(
                [i * length + np.asarray(e["doc_starts"], np.int64) for i, e in enumerate(examples)]
            )
        return BlockBatch(tokens=tokens, block_index=index, epoch=epoch, doc_ids=doc_ids,
                          doc_starts=doc_starts)  # fmt: skip
