"""A map-style dataset over all blocks of one split of a `pipeline run` output (no torch).

Built from manifest.json: shards in manifest order form one global block index; record batches
("chunks", `batch_blocks` rows each but a shard's last) are read on demand and a few
decompressed ones are kept in an LRU cache, so the split is never loaded whole. Index `i`
(0 <= i < len) is block i, returned as an example dict (the `transformers.Trainer` path);
a list of keys `epoch * len + block` (what `BlockSampler` yields) returns one `BlockBatch`
gathered chunk by chunk (the fast path: `DataLoader(dataset, sampler=sampler,
batch_size=None)`).

Checked when opened: the manifest's format version, what the caller expects
(`DataExpectation`), every shard's file size against the manifest, and that the vocabulary
fits the model's embedding; each shard's metadata (format version, block size, dtype,
tokenizer sha256, split) when it is first opened (the first one at once), so that a
10^5-shard split opens in a fraction of a second; each chunk's largest id is checked when it
is decompressed.
"""

from __future__ import annotations

import itertools
import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.fs as pafs

from pipeline.errors import DataError, UsageError
from pipeline.format import storage
from pipeline.format.integrity import check_shard, expected_meta
from pipeline.format.manifest import ShardRecord, TokenizerRecord, load_manifest
from pipeline.format.shards import ShardReader

# Memory-mapped shards kept open per process: a window touches at most `window_chunks` shards,
# and a split of thousands of shards must not exhaust file descriptors.
_OPEN_SHARDS = 64
# What decides how blocks read: the vocabulary size is checked per chunk when it is read.
_LAYOUT_KEYS = ("format_version", "block_size", "dtype", "tokenizer_sha256", "split")


@dataclass(frozen=True, kw_only=True)
class DataExpectation:
    """What the training run expects of the data; None means no expectation."""

    tokenizer_sha256: str | None = None
    block_size: int | None = None
    dtype: str | None = None
    num_embeddings: int | None = None  # rows of the model's input embedding
    source: str = "the training run"  # named in error messages

    def __post_init__(self) -> None:
        if self.dtype not in (None, "uint16", "uint32"):
            raise ValueError(f"dtype must be uint16, uint32 or None, found {self.dtype}")


@dataclass(frozen=True)
class BlockBatch:
    tokens: np.ndarray  # [b, block_size], the shard dtype
    block_index: np.ndarray  # int64 [b]
    epoch: np.ndarray  # int64 [b]
    doc_ids: np.ndarray | None = None  # int32 [b, block_size]: document number inside a block
    # int64: flat positions (row * block_size + position) of the stored document starts
    doc_starts: np.ndarray | None = None


class BlockDataset:
    def __init__(
        self,
        output: str,
        split: str,
        *,
        expect: DataExpectation | None = None,
        cache_chunks: int = 18,
        with_doc_ids: bool = False,
        with_doc_starts: bool = False,
    ) -> None:
        self.output = output
        self.split = split
        self.manifest = load_manifest(output)
        self.with_doc_ids = with_doc_ids
        self.with_doc_starts = with_doc_starts  # cheaper than doc_ids: no [b, L] array
        self.cache_chunks = max(1, cache_chunks)
        entry = self.manifest.splits.get(split)
        if entry is None or not entry.num_blocks:
            raise DataError(
                f"{output}: expected blocks in split {split!r}, found "
                f"{'no such split' if entry is None else entry.num_blocks}; "
                "rerun `pipeline run` with more input (or a validation fraction > 0)"
            )
        self.tokenizer: TokenizerRecord = self.manifest.tokenizer
        self.block_size = self.manifest.block_size
        self.dtype = self.tokenizer.dtype
        batch_blocks = self.manifest.batch_blocks
        # `ShardRecord.uri` joined once: per shard it cost ~8 us (0.8 s for 10^5 shards).
        prefix = entry.shards[0].uri(output)[: -len(entry.shards[0].file)] if entry.shards else ""
        self.shard_uris = [prefix + s.file for s in entry.shards]
        counts = [s.num_blocks for s in entry.shards]
        sizes, owners = [], []
        for k, n in enumerate(counts):
            full, rest = divmod(n, batch_blocks)
            for j in range(full + (1 if rest else 0)):
                sizes.append(batch_blocks if j < full else rest)
                owners.append((k, j))
        self.chunk_sizes = sizes
        self.chunk_owner = owners  # chunk -> (shard, record batch)
        self.chunk_starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        self.num_blocks = int(self.chunk_starts[-1])
        self._checked: set[int] = set()
        self._check(expect or DataExpectation(), entry.shards)
        self._readers: OrderedDict[int, ShardReader] = OrderedDict()
        self._cache: OrderedDict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = OrderedDict()
        self._pid = os.getpid()

    def _check(self, expect: DataExpectation, shards: tuple[ShardRecord, ...]) -> None:
        tok = self.tokenizer
        found = {"tokenizer sha256": tok.sha256, "block size": self.block_size}
        found["dtype"] = self.dtype
        wanted = {"tokenizer sha256": expect.tokenizer_sha256, "block size": expect.block_size}
        wanted["dtype"] = expect.dtype
        for what, want in wanted.items():
            if want is not None and want != found[what]:
                raise DataError(
                    f"{self.output}: {expect.source} expects {what} {want}, found {found[what]} "
                    "in these shards; train on an output made with the same tokenizer and "
                    "block size (or rerun `pipeline run` to make one)"
                )
        if expect.num_embeddings is not None and tok.vocab_size > expect.num_embeddings:
            raise DataError(
                f"{self.output}: expected token ids below the model's {expect.num_embeddings} "
                f"embedding rows, found a vocabulary of {tok.vocab_size}; train a model "
                "whose vocabulary covers the tokenizer's (or resize its embeddings)"
            )
        # Sizes in one batched call (10^5 shards: 0.25 s, where a stat or two each took
        # 15 s); no hashing (that is `pipeline verify`, or `--verify`). The footer metadata
        # that decides how blocks read is checked when a shard is first opened (`_reader`),
        # the first shard now, so that a whole output of another run is refused at once:
        # 0.6 ms a shard, a minute at open for 10^5 shards. The vocabulary: chunk by chunk.
        fs, base = storage.resolve(self.output)  # once: resolving each path costs 140 us
        infos = fs.get_file_info([f"{base}/{rec.file}" for rec in shards])
        for uri, rec, info in zip(self.shard_uris, shards, infos, strict=True):
            if info.type != pafs.FileType.File:
                problem = "missing"
            elif info.size != rec.num_bytes:  # the words of integrity.check_shard
                what = "truncated" if info.size < rec.num_bytes else "size differs"
                problem = f"{what}: expected {rec.num_bytes:,} bytes, found {info.size:,}"
            else:
                continue
            raise DataError(
                f"{uri}: expected the shard the manifest lists, found a problem: {problem}; "
                "rerun `pipeline run` on this output"
            )
        self._expected_meta = expected_meta(self.manifest, self.split)
        self._reader(0)

    def _reader(self, shard: int) -> ShardReader:
        """Open a shard; its footer metadata is checked against the manifest on first open."""
        uri = self.shard_uris[shard]
        if shard not in self._checked:
            check = check_shard(
                uri, num_bytes=None, expected=self._expected_meta, meta_keys=_LAYOUT_KEYS
            )
            if not check.ok:
                raise DataError(
                    f"{uri}: expected the shard the manifest lists, found a problem: "
                    f"{'; '.join(check.problems)}; rerun `pipeline run` on this output (with "
                    "--overwrite if the shard belongs to another run)"
                )
            self._checked.add(shard)
        return ShardReader(uri)

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records to check that a resumed run reads the same data."""
        return {
            "output": self.output,
            "tokenizer_sha256": self.tokenizer.sha256,
            "block_size": self.block_size,
            "dtype": self.dtype,
            "num_blocks": self.num_blocks,
        }

    def __len__(self) -> int:
        return self.num_blocks

    def __getitem__(self, index: Any) -> Any:
        if isinstance(index, (int, np.integer)):
            if not 0 <= index < self.num_blocks:
                raise IndexError(f"block {index} out of range 0..{self.num_blocks - 1}")
            batch = self.fetch([int(index)])
            example = {"input_ids": batch.tokens[0], "block_index": int(index)}
            if batch.doc_ids is not None:
                example["doc_ids"] = batch.doc_ids[0]
            if batch.doc_starts is not None:
                example["doc_starts"] = batch.doc_starts  # row 0: positions in the block
            return example
        return self.fetch(index)

    def fetch(self, keys: Any) -> BlockBatch:
        """Blocks for keys `epoch * len + block`, in the order given."""
        keys = np.asarray(keys, dtype=np.int64)
        epoch, block = np.divmod(keys, self.num_blocks)
        chunk = np.searchsorted(self.chunk_starts, block, side="right") - 1
        tokens = np.empty((keys.size, self.block_size), dtype=self.dtype)
        doc_ids = np.zeros((keys.size, self.block_size), np.int32) if self.with_doc_ids else None
        starts: list[np.ndarray] = []
        # Rows grouped by chunk with a sort, not np.unique: numpy 2's unique imports numpy.ma
        # (measured 30-40 ms, before a trainer's first batch and in every DataLoader worker).
        order = np.argsort(chunk, kind="stable")
        in_order = chunk[order]
        # Slices by hand, not np.split: a batch touches ~10 chunks, and np.split's per-piece
        # overhead was 40 % of a 32-block fetch (cProfile).
        edges = [0, *(np.flatnonzero(np.diff(in_order)) + 1).tolist(), keys.size]
        for lo_row, hi_row in itertools.pairwise(edges) if keys.size else []:
            rows = order[lo_row:hi_row]
            c = in_order[lo_row]
            local = block[rows] - self.chunk_starts[c]
            chunk_tokens, values, offsets = self._chunk(int(c))
            tokens[rows] = chunk_tokens[local]
            if doc_ids is not None or self.with_doc_starts:
                lo, hi = offsets[local], offsets[local + 1]
                counts = hi - lo
                where = np.repeat(lo - np.cumsum(counts) + counts, counts)
                where += np.arange(int(counts.sum()))
                row_of, position = np.repeat(rows, counts), values[where]
                if doc_ids is not None:
                    doc_ids[row_of, position] = 1
                if self.with_doc_starts:
                    starts.append(row_of * self.block_size + position)
        if doc_ids is not None:
            np.cumsum(doc_ids, axis=1, out=doc_ids)
        doc_starts = None
        if self.with_doc_starts:
            doc_starts = np.sort(np.concatenate(starts)) if starts else np.zeros(0, np.int64)
        return BlockBatch(tokens=tokens, block_index=block, epoch=epoch, doc_ids=doc_ids,
                          doc_starts=doc_starts)  # fmt: skip

    def _chunk(self, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if os.getpid() != self._pid:  # a forked DataLoader worker: open its own files
            self._readers, self._cache, self._pid = OrderedDict(), OrderedDict(), os.getpid()
        if c in self._cache:
            self._cache.move_to_end(c)
            return self._cache[c]
        shard, batch = self.chunk_owner[c]
        if shard not in self._readers:
            self._readers[shard] = self._reader(shard)
            while len(self._readers) > _OPEN_SHARDS:
                self._readers.popitem(last=False)
        self._readers.move_to_end(shard)
        blocks = self._readers[shard].read_batch(batch)
        if blocks.num_blocks != self.chunk_sizes[c]:
            raise DataError(
                f"{self.shard_uris[shard]}: expected {self.chunk_sizes[c]} blocks in record "
                f"batch {batch}, found {blocks.num_blocks}; the shard does not match the "
                "manifest, rerun `pipeline run` on this output"
            )
        top = int(blocks.tokens.max()) if blocks.num_blocks else 0
        if top >= self.tokenizer.vocab_size:
            raise DataError(
                f"{self.shard_uris[shard]}: expected ids below vocab size "
                f"{self.tokenizer.vocab_size}, found {top} in record batch {batch}; the "
                "shard is damaged, rerun `pipeline run` on this output"
            )
        entry = (blocks.tokens, blocks.start_values.astype(np.int64), blocks.start_offsets)
        self._cache[c] = entry
        while len(self._cache) > self.cache_chunks:
            self._cache.popitem(last=False)
        return entry

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_readers"], state["_cache"] = OrderedDict(), OrderedDict()
        return state


def to_hf_dataset(output: str, split: str, cache_dir: str | None = None) -> Any:
    """The split as a `datasets.Dataset` (columns input_ids, doc_starts), same block order.

    `datasets` reads the shards with its "arrow" builder and writes an uncompressed copy into
    its cache (`cache_dir`), as it does for any dataset it loads.
    """
    try:
        import datasets
    except ImportError as exc:
        raise UsageError(
            f"to_hf_dataset: expected the `datasets` package, found it missing ({exc}); "
            "run `pip install datasets`"
        ) from exc
    data = BlockDataset(output, split)
    return datasets.load_dataset(
        "arrow", data_files={split: data.shard_uris}, split=split, cache_dir=cache_dir
    )
