"""The shard format: writer and reader side by side. Described in schemas/shard.json.

`OUT/<split>/shard-NNNNN.arrow` is an Arrow IPC *file* (random access to record batches) with
zstd buffer compression. Columns, one row per block:

* `input_ids`: fixed_size_list<uint16 | uint32>[block_size], the block's token ids
* `doc_starts`: list<uint16>, positions inside the block where a document begins

Every record batch holds `batch_blocks` rows (2,048 by default) but the last. Schema metadata
(all values are UTF-8 strings): format_version, block_size, dtype, packing, split,
tokenizer_sha256, vocab_size, special_ids (JSON object). A reader refuses a file whose
metadata does not match what it expects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from pipeline import FORMAT_VERSION
from pipeline.core.packing import Blocks, concat_blocks
from pipeline.errors import DataError, brief
from pipeline.format import storage

METADATA_KEYS = (
    "format_version",
    "block_size",
    "dtype",
    "packing",
    "split",
    "tokenizer_sha256",
    "vocab_size",
    "special_ids",
)


@dataclass(frozen=True, kw_only=True)
class ShardMeta:
    block_size: int
    dtype: str
    packing: str
    split: str
    tokenizer_sha256: str
    vocab_size: int
    special_ids: dict[str, int | None]
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if self.dtype not in ("uint16", "uint32"):
            raise ValueError(f"dtype must be uint16 or uint32, found {self.dtype}")

    def to_metadata(self) -> dict[bytes, bytes]:
        values = {
            "format_version": str(self.format_version),
            "block_size": str(self.block_size),
            "dtype": self.dtype,
            "packing": self.packing,
            "split": self.split,
            "tokenizer_sha256": self.tokenizer_sha256,
            "vocab_size": str(self.vocab_size),
            "special_ids": json.dumps(self.special_ids, sort_keys=True),
        }
        return {k.encode(): v.encode() for k, v in values.items()}

    @classmethod
    def from_schema(cls, schema: pa.Schema, where: str) -> ShardMeta:
        raw = {k.decode(): v.decode() for k, v in (schema.metadata or {}).items()}
        missing = [k for k in METADATA_KEYS if k not in raw]
        if missing:
            raise DataError(
                f"{where}: expected shard metadata keys {', '.join(METADATA_KEYS)}, found "
                f"none for {', '.join(missing)}; this is not a shard written by this pipeline"
            )
        return cls(
            format_version=int(raw["format_version"]),
            block_size=int(raw["block_size"]),
            dtype=raw["dtype"],
            packing=raw["packing"],
            split=raw["split"],
            tokenizer_sha256=raw["tokenizer_sha256"],
            vocab_size=int(raw["vocab_size"]),
            special_ids=json.loads(raw["special_ids"]),
        )


def shard_schema(meta: ShardMeta) -> pa.Schema:
    id_type = pa.uint16() if meta.dtype == "uint16" else pa.uint32()
    return pa.schema(
        [
            pa.field("input_ids", pa.list_(id_type, meta.block_size), nullable=False),
            pa.field("doc_starts", pa.list_(pa.uint16()), nullable=False),
        ],
        metadata=meta.to_metadata(),
    )


@dataclass(frozen=True, kw_only=True)
class ShardFileInfo:
    sha256: str
    num_bytes: int
    num_blocks: int
    num_doc_starts: int


class ShardWriter:
    """Buffers blocks into fixed-size record batches; `close()` publishes the file atomically.

    The whole compressed file is built in memory (a work unit's shard is ~20 MB), hashed, and
    written in one atomic step, so a crash never leaves a partial shard under its final name.
    """

    def __init__(self, uri: str, meta: ShardMeta, batch_blocks: int, level: int) -> None:
        self.uri = uri
        self.meta = meta
        self._schema = shard_schema(meta)
        self._np_dtype = np.dtype(meta.dtype)
        self._batch_blocks = batch_blocks
        self._sink = pa.BufferOutputStream()
        options = pa.ipc.IpcWriteOptions(compression=pa.Codec("zstd", compression_level=level))
        self._writer = pa.ipc.new_file(self._sink, self._schema, options=options)
        self._pending: list[Blocks] = []
        self._num_pending = 0
        self._num_blocks = 0
        self._num_starts = 0

    def write(self, blocks: Blocks) -> None:
        if not blocks.num_blocks:
            return
        self._pending.append(blocks)
        self._num_pending += blocks.num_blocks
        while self._num_pending >= self._batch_blocks:
            merged = concat_blocks(self._pending, self.meta.block_size)
            self._write_batch(_slice(merged, 0, self._batch_blocks))
            rest = _slice(merged, self._batch_blocks, merged.num_blocks)
            self._pending = [rest]
            self._num_pending = rest.num_blocks

    def _write_batch(self, blocks: Blocks) -> None:
        tokens = _arrow(blocks.tokens.ravel(), self._np_dtype)
        ids = pa.FixedSizeListArray.from_arrays(tokens, self.meta.block_size)
        starts = pa.ListArray.from_arrays(
            _arrow(blocks.start_offsets, np.dtype(np.int32)),
            _arrow(blocks.start_values, np.dtype(np.uint16)),
        )
        self._writer.write_batch(pa.record_batch([ids, starts], schema=self._schema))
        self._num_blocks += blocks.num_blocks
        self._num_starts += int(blocks.start_values.size)

    def close(self) -> ShardFileInfo:
        if self._num_pending:
            self._write_batch(concat_blocks(self._pending, self.meta.block_size))
        self._pending, self._num_pending = [], 0
        self._writer.close()
        data = self._sink.getvalue().to_pybytes()
        storage.write_bytes_atomic(self.uri, data)
        return ShardFileInfo(
            sha256=hashlib.sha256(data).hexdigest(),
            num_bytes=len(data),
            num_blocks=self._num_blocks,
            num_doc_starts=self._num_starts,
        )


def _arrow(values: np.ndarray, dtype: np.dtype) -> pa.Array:
    """A numpy array as an Arrow array over the same bytes. `pa.array(ndarray)` imports
    pandas on first use: measured 0.78 s of CPU in every worker process before its first shard."""
    values = np.ascontiguousarray(values, dtype=dtype)
    arrow_type = pa.from_numpy_dtype(dtype)
    return pa.Array.from_buffers(arrow_type, len(values), [None, pa.py_buffer(values)])


def _slice(blocks: Blocks, start: int, stop: int) -> Blocks:
    lo, hi = int(blocks.start_offsets[start]), int(blocks.start_offsets[stop])
    return Blocks(
        tokens=blocks.tokens[start:stop],
        start_values=blocks.start_values[lo:hi],
        start_offsets=blocks.start_offsets[start : stop + 1] - lo,
    )


def _values(array: pa.Array, dtype: str) -> np.ndarray:
    """A null-free primitive array as a zero-copy numpy view, without pandas.

    `Array.to_numpy(zero_copy_only=False)` imports pandas on first use: measured 0.19-0.4 s
    before a trainer's first batch, paid again by every DataLoader worker. The shard schema
    declares every column non-nullable, so the values buffer is the whole story.
    """
    if array.null_count:
        raise DataError(f"expected no nulls in a shard column, found {array.null_count}")
    dt = np.dtype(dtype)
    if array.type.bit_width != dt.itemsize * 8:
        raise DataError(f"expected {dtype} values in a shard column, found {array.type}")
    buffer = array.buffers()[1]
    return np.frombuffer(buffer, dtype=dt, count=len(array), offset=array.offset * dt.itemsize)


class ShardReader:
    """Random access to a shard's record batches; checks its metadata on open."""

    def __init__(self, uri: str, data: bytes | None = None) -> None:
        self.uri = uri
        try:
            if data is not None:
                source = pa.BufferReader(data)
            elif storage.is_remote(uri):
                source = pa.BufferReader(storage.read_bytes(uri))
            else:
                source = pa.memory_map(storage.normalize(uri))
            self._file = pa.ipc.open_file(source)
        except (pa.ArrowInvalid, OSError) as exc:
            raise DataError(
                f"{uri}: expected an Arrow IPC shard, found a file that does not open "
                f"({brief(exc, 160)}); rerun `pipeline run` to rewrite it"
            ) from exc
        self.meta = ShardMeta.from_schema(self._file.schema, uri)

    @property
    def num_batches(self) -> int:
        return self._file.num_record_batches

    def read_batch(self, index: int) -> Blocks:
        """One record batch as read-only numpy views of Arrow's decompressed buffers."""
        batch = self._file.get_batch(index)
        ids, starts = batch.column(0), batch.column(1)
        size = self.meta.block_size  # `.values` ignores a slice's offset; `flatten()` would
        # not, but it imports pyarrow.compute (0.13 s)
        tokens = _values(ids.values, self.meta.dtype)[ids.offset * size :][: len(ids) * size]
        tokens = tokens.reshape(-1, size)
        offsets = _values(starts.offsets, "int32")
        values = _values(starts.values, "uint16")[offsets[0] : offsets[-1]]
        return Blocks(
            tokens=tokens,
            start_values=values,
            start_offsets=offsets - offsets[0] if offsets[0] else offsets,
        )

    def read_all(self) -> Blocks:
        parts = [self.read_batch(i) for i in range(self.num_batches)]
        if not parts:
            empty = np.zeros((0, self.meta.block_size), dtype=self.meta.dtype)
            return Blocks(empty, np.zeros(0, np.uint16), np.zeros(1, np.int32))
        return concat_blocks(parts, self.meta.block_size)
