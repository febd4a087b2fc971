"""Pure packing: documents' token ids -> fixed-size blocks + where documents start in them.

Two modes (`PackSpec`):

* concat: every document is wrapped in the tokenizer's own specials (`[CLS] doc [SEP]` for
  BERT/DeBERTa), all are concatenated and cut every `block_size` tokens. This is the token
  stream of `datasets.map(tokenizer)` + `group_texts`.
* framed (RoBERTa's FULL-SENTENCES): documents are followed by `[SEP]`, concatenated, cut every
  `block_size - 2` tokens, and each cut is framed `[CLS] ... [SEP]`.

A `Packer` carries what does not fill a block from one batch to the next; what is left at the
end (< one block of content) is returned by `leftover()` so a later step can stitch the
leftovers of all work units together. Document starts are positions inside a block (uint16,
as block_size <= 65,536), laid out like an Arrow list column: values + offsets.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, kw_only=True)
class PackSpec:
    block_size: int
    doc_prefix: tuple[int, ...]
    doc_suffix: tuple[int, ...]
    frame: tuple[int, int] | None  # (cls, sep) around every block, or None

    def __post_init__(self) -> None:
        if self.content_size < 1:
            raise ValueError(f"block_size {self.block_size} leaves no room for content")

    @property
    def content_size(self) -> int:
        return self.block_size - (2 if self.frame else 0)

    @property
    def frame_tokens(self) -> int:
        return 2 if self.frame else 0

    @property
    def doc_special_tokens(self) -> int:
        return len(self.doc_prefix) + len(self.doc_suffix)


@dataclass(frozen=True)
class Blocks:
    tokens: np.ndarray  # [num_blocks, block_size], uint32
    start_values: np.ndarray  # uint16 positions of document starts, block after block
    start_offsets: np.ndarray  # int32, num_blocks + 1: block i owns values[off[i]:off[i+1]]

    @property
    def num_blocks(self) -> int:
        return int(self.tokens.shape[0])


def build_stream(
    ids: np.ndarray, lengths: np.ndarray, prefix: tuple[int, ...], suffix: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """Documents back to back, each as prefix + ids + suffix; and where each one starts."""
    lengths = np.asarray(lengths, dtype=np.int64)
    n_pre, n_suf = len(prefix), len(suffix)
    doc_len = lengths + n_pre + n_suf
    ends = np.cumsum(doc_len)
    starts = ends - doc_len
    stream = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint32)
    content_starts = np.cumsum(lengths) - lengths
    shift = np.repeat(starts + n_pre - content_starts, lengths)
    stream[np.arange(ids.size, dtype=np.int64) + shift] = ids
    for j, tok in enumerate(prefix):
        stream[starts + j] = tok
    for j, tok in enumerate(suffix):
        stream[starts + n_pre + lengths + j] = tok
    return stream, starts


class Packer:
    """Cuts a token stream into blocks, carrying the remainder between calls."""

    def __init__(self, spec: PackSpec) -> None:
        self.spec = spec
        self._pending = np.zeros(0, dtype=np.uint32)
        self._pending_starts = np.zeros(0, dtype=np.int64)

    def add(self, stream: np.ndarray, starts: np.ndarray) -> Blocks:
        """Append a stream (with document start offsets into it); return the full blocks."""
        spec = self.spec
        size = spec.content_size
        tokens = np.concatenate([self._pending, stream.astype(np.uint32, copy=False)])
        all_starts = np.concatenate([self._pending_starts, starts + self._pending.size])
        num_blocks = tokens.size // size
        used = num_blocks * size
        self._pending = tokens[used:].copy()
        in_blocks = all_starts < used
        self._pending_starts = all_starts[~in_blocks] - used
        return _make_blocks(spec, tokens[:used].reshape(num_blocks, size), all_starts[in_blocks])

    def leftover(self) -> tuple[np.ndarray, np.ndarray]:
        """Content that did not fill a block, and its document starts (offsets into it)."""
        return self._pending.copy(), self._pending_starts.copy()


def _make_blocks(spec: PackSpec, content: np.ndarray, starts: np.ndarray) -> Blocks:
    num_blocks, size = content.shape
    if spec.frame:
        tokens = np.empty((num_blocks, spec.block_size), dtype=np.uint32)
        tokens[:, 0] = spec.frame[0]
        tokens[:, 1:-1] = content
        tokens[:, -1] = spec.frame[1]
    else:
        tokens = content
    block_of = starts // size
    values = (starts % size + (1 if spec.frame else 0)).astype(np.uint16)
    offsets = np.searchsorted(block_of, np.arange(num_blocks + 1), side="left").astype(np.int32)
    return Blocks(tokens=tokens, start_values=values, start_offsets=offsets)


def concat_blocks(parts: list[Blocks], block_size: int) -> Blocks:
    """Join several Blocks into one (offsets re-based)."""
    parts = [p for p in parts if p.num_blocks]
    if not parts:
        return Blocks(
            np.zeros((0, block_size), np.uint32), np.zeros(0, np.uint16), np.zeros(1, np.int32)
        )
    offsets = [parts[0].start_offsets]
    base = int(parts[0].start_offsets[-1])
    for p in parts[1:]:
        offsets.append(p.start_offsets[1:] + base)
        base += int(p.start_offsets[-1])
    return Blocks(
        tokens=np.concatenate([p.tokens for p in parts]),
        start_values=np.concatenate([p.start_values for p in parts]),
        start_offsets=np.concatenate(offsets).astype(np.int32),
    )
