"""Round trips of the shard format, its metadata checks and its determinism."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipeline.core.packing import Blocks
from pipeline.errors import DataError
from pipeline.format.shards import ShardMeta, ShardReader, ShardWriter


def _meta(block_size: int, dtype: str) -> ShardMeta:
    return ShardMeta(
        block_size=block_size,
        dtype=dtype,
        packing="framed",
        split="train",
        tokenizer_sha256="ab" * 32,
        vocab_size=70_000 if dtype == "uint32" else 30_522,
        special_ids={"cls": 1, "sep": 2, "mask": None},
    )


def _random_blocks(rng: np.random.Generator, n: int, size: int, high: int) -> Blocks:
    tokens = rng.integers(0, high, size=(n, size), dtype=np.uint32)
    counts = rng.integers(0, 4, size=n)
    values = np.concatenate(
        [np.sort(rng.choice(size, c, replace=False)) for c in counts] or [np.zeros(0)]
    ).astype(np.uint16)
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int32)
    return Blocks(tokens, values, offsets)


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_parts=st.lists(st.integers(0, 50), max_size=5),
    batch_blocks=st.integers(1, 40),
    dtype=st.sampled_from(["uint16", "uint32"]),
    seed=st.integers(0, 1000),
)
def test_round_trip(
    tmp_path: Path, n_parts: list[int], batch_blocks: int, dtype: str, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    high = 65_536 if dtype == "uint16" else 2**32 - 1
    parts = [_random_blocks(rng, n, 16, high) for n in n_parts]
    uri = str(tmp_path / f"s-{seed}-{batch_blocks}.arrow")
    writer = ShardWriter(uri, _meta(16, dtype), batch_blocks, 3)
    for p in parts:
        writer.write(p)
    info = writer.close()

    reader = ShardReader(uri)
    assert reader.meta == _meta(16, dtype)
    sizes = [reader.read_batch(i).num_blocks for i in range(reader.num_batches)]
    assert all(s == batch_blocks for s in sizes[:-1]) and sum(sizes) == sum(n_parts)
    back = reader.read_all()
    assert info.num_blocks == back.num_blocks == sum(n_parts)
    if parts:
        tokens = np.concatenate([p.tokens for p in parts])
        assert (back.tokens == tokens).all()
        assert back.tokens.dtype == np.dtype(dtype)
        assert (
            back.start_values.tolist() == np.concatenate([p.start_values for p in parts]).tolist()
        )
        assert info.num_doc_starts == back.start_values.size


def test_bytes_do_not_depend_on_how_blocks_arrive(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    blocks = _random_blocks(rng, 100, 32, 30_000)
    one = ShardWriter(str(tmp_path / "a.arrow"), _meta(32, "uint16"), 16, 3)
    one.write(blocks)
    many = ShardWriter(str(tmp_path / "b.arrow"), _meta(32, "uint16"), 16, 3)
    for lo in range(0, 100, 7):
        hi = min(lo + 7, 100)
        off = blocks.start_offsets
        many.write(
            Blocks(
                blocks.tokens[lo:hi],
                blocks.start_values[off[lo] : off[hi]],
                off[lo : hi + 1] - off[lo],
            )
        )
    assert one.close().sha256 == many.close().sha256
    assert (tmp_path / "a.arrow").read_bytes() == (tmp_path / "b.arrow").read_bytes()
    assert not list(tmp_path.glob(".*tmp*")), "no temporary files are left behind"


def test_reader_refuses_a_file_that_is_not_a_shard(tmp_path: Path) -> None:
    bad = tmp_path / "shard-00000.arrow"
    bad.write_bytes(b"not arrow at all")
    with pytest.raises(DataError, match=r"shard-00000.arrow: expected an Arrow IPC shard"):
        ShardReader(str(bad))


def test_reader_refuses_arrow_without_shard_metadata(tmp_path: Path) -> None:
    import pyarrow as pa

    path = tmp_path / "plain.arrow"
    table = pa.table({"input_ids": [[1, 2]]})
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as w:
        w.write_table(table)
    with pytest.raises(DataError, match="expected shard metadata keys"):
        ShardReader(str(path))


def test_metadata_rejects_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="dtype must be uint16 or uint32"):
        _meta(16, "int64")
