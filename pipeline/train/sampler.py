"""Which blocks each rank trains on, in which order: pure, deterministic, resumable.

The training data is an endless *stream* of epochs. Epoch `e` is a permutation of all blocks
of the split that depends only on (seed, e); stream position `p` holds block
`order(p // N)[p % N]` (N blocks per epoch). A sample is named by its *key*
`epoch * N + block`, which is what the dataset reads and what masking is seeded from.

Global micro-batch `m` covers stream positions `[m*W*B, (m+1)*W*B)` (W ranks, B blocks per rank);
rank `r` takes `[m*W*B + r*B, m*W*B + (r+1)*B)`. So ranks never overlap and leave no gap, every
rank gets exactly B blocks per micro-batch (DDP needs equal step counts), and a batch may run
across an epoch boundary rather than drop or repeat blocks. DataLoader workers take whole
micro-batches round-robin from this sampler (the DataLoader does that, in order), so the worker
count changes nothing. The state is one number, the stream position already consumed, so a
resumed run continues exactly mid-epoch whatever its worker count.

Order within an epoch is a windowed shuffle, for locality: shard record batches ("chunks",
2,048 blocks each by default) are permuted, grouped into windows of `window_chunks` chunks, and
the blocks of each window are shuffled. A reader then needs only one window of decompressed
chunks at a time instead of decompressing a whole record batch for every block it reads; with
16 chunks a window mixes 32 K blocks from 16 random places of the corpus.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

_WINDOW_CACHE = 4  # a micro-batch spans at most a few windows


class BlockSampler:
    """Yields this rank's micro-batches of block keys, endlessly, from `position` on."""

    def __init__(
        self,
        chunk_sizes: Sequence[int],
        *,
        batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        window_chunks: int = 16,
    ) -> None:
        sizes = np.asarray(chunk_sizes, dtype=np.int64)
        if sizes.size == 0 or int(sizes.min()) < 1:
            raise ValueError(f"chunk sizes must be positive and non-empty, found {sizes[:5]}")
        if batch_size < 1 or world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"bad batch_size {batch_size}, rank {rank} or world {world_size}")
        if window_chunks < 1 or seed < 0:
            raise ValueError(f"window_chunks must be >= 1 and seed >= 0, found {window_chunks}")
        self.chunk_sizes = sizes
        self.chunk_starts = np.concatenate([[0], np.cumsum(sizes)])
        self.num_blocks = int(self.chunk_starts[-1])
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.window_chunks = window_chunks
        self.position = 0  # stream position of the next global micro-batch not yet consumed
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._windows: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()

    @property
    def global_batch(self) -> int:
        return self.batch_size * self.world_size

    def __iter__(self) -> Iterator[list[int]]:
        start = self.position + self.rank * self.batch_size
        while True:
            yield self.stream_keys(start, start + self.batch_size).tolist()
            start += self.global_batch

    def mark_consumed(self, num_micro_batches: int) -> None:
        """Training used this many more global micro-batches: move the resume point."""
        self.position += num_micro_batches * self.global_batch

    def epoch_of(self, position: int) -> float:
        return position / self.num_blocks

    def state_dict(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "seed": self.seed,
            "num_blocks": self.num_blocks,
            "window_chunks": self.window_chunks,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("seed", "num_blocks", "window_chunks"):
            if state[key] != getattr(self, key):
                raise ValueError(
                    f"sampler state has {key}={state[key]}, this sampler {getattr(self, key)}"
                )
        self.position = int(state["position"])

    def stream_keys(self, start: int, stop: int) -> np.ndarray:
        """Keys (epoch * N + block) of stream positions [start, stop)."""
        n = self.num_blocks
        parts = []
        pos = start
        while pos < stop:
            epoch, q = divmod(pos, n)
            window_starts, _ = self._epoch_plan(epoch)
            w = int(np.searchsorted(window_starts, q, side="right")) - 1
            w_lo, w_hi = int(window_starts[w]), int(window_starts[w + 1])
            take = min(stop - pos, w_hi - q)
            blocks = self._window_blocks(epoch, w)
            parts.append(blocks[q - w_lo : q - w_lo + take] + epoch * n)
            pos += take
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def _epoch_plan(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(window start offsets within the epoch, chunk permutation) for one epoch."""
        if epoch not in self._epochs:
            rng = np.random.default_rng([self.seed, epoch])
            chunk_order = rng.permutation(self.chunk_sizes.size)
            sizes = self.chunk_sizes[chunk_order]
            ends = np.cumsum(sizes)[self.window_chunks - 1 :: self.window_chunks]
            if ends.size == 0 or ends[-1] != self.num_blocks:
                ends = np.append(ends, self.num_blocks)
            self._epochs[epoch] = (np.concatenate([[0], ends]), chunk_order)
            while len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def _window_blocks(self, epoch: int, window: int) -> np.ndarray:
        key = (epoch, window)
        if key not in self._windows:
            _, chunk_order = self._epoch_plan(epoch)
            chunks = chunk_order[window * self.window_chunks : (window + 1) * self.window_chunks]
            blocks = np.concatenate(
                [np.arange(self.chunk_starts[c], self.chunk_starts[c + 1]) for c in chunks]
            )
            # A separate stream per window, so a window is built without the ones before it.
            np.random.default_rng([self.seed, epoch, window, 1]).shuffle(blocks)
            self._windows[key] = blocks
            while len(self._windows) > _WINDOW_CACHE:
                self._windows.popitem(last=False)
        return self._windows[key]
