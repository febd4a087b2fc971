"""BlockDataset: global index over shards, bounded cache, document ids, checks on open, and
the DataLoader split across workers (no overlap, no gap, exact resume with another count)."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest

from pipeline.core.packing import concat_blocks
from pipeline.errors import DataError
from pipeline.format.manifest import load_manifest
from pipeline.format.shards import ShardReader, ShardWriter
from pipeline.train.dataset import BlockDataset, DataExpectation
from pipeline.train.sampler import BlockSampler


def all_blocks(output: str, split: str) -> tuple:
    manifest = load_manifest(output)
    files = [Path(output, s.file) for s in manifest.splits[split].shards]
    blocks = concat_blocks([ShardReader(str(f)).read_all() for f in files], 128)
    return blocks


def test_index_spans_all_shards_in_manifest_order(shards: str) -> None:
    expected = all_blocks(shards, "train")
    data = BlockDataset(shards, "train", cache_chunks=2)
    assert len(data) == expected.num_blocks > 10_000
    assert len(data.chunk_sizes) > 5  # several shards, so the index crosses shard borders
    order = np.random.default_rng(0).permutation(len(data))
    got = np.concatenate([data[order[i : i + 500]].tokens for i in range(0, len(data), 500)])
    assert np.array_equal(got, expected.tokens[order])
    assert len(data._cache) <= 2  # never more than cache_chunks decompressed batches
    example = data[17]
    assert np.array_equal(example["input_ids"], expected.tokens[17])
    assert example["block_index"] == 17
    with pytest.raises(IndexError, match="out of range"):
        data[len(data)]


def test_keys_carry_the_epoch(shards: str) -> None:
    data = BlockDataset(shards, "validation")
    n = len(data)
    batch = data[[5, 2 * n + 5, n + 7]]
    assert batch.epoch.tolist() == [0, 2, 1]
    assert batch.block_index.tolist() == [5, 5, 7]
    assert np.array_equal(batch.tokens[0], batch.tokens[1])


def test_document_ids_count_the_document_starts(shards: str) -> None:
    expected = all_blocks(shards, "validation")
    data = BlockDataset(shards, "validation", with_doc_ids=True)
    picks = [0, 3, 100, len(data) - 1, 250]
    batch = data[picks]
    assert batch.doc_ids is not None
    for row, block in enumerate(picks):
        lo, hi = expected.start_offsets[block], expected.start_offsets[block + 1]
        starts = expected.start_values[lo:hi].astype(int)
        want = np.searchsorted(starts, np.arange(128), side="right")
        assert np.array_equal(batch.doc_ids[row], want)
    assert int(batch.doc_ids.max()) >= 1  # some block holds a document start


def test_dataloader_workers_split_batches_with_no_overlap_and_no_gap(shards: str) -> None:
    torch = pytest.importorskip("torch")
    from torch.utils.data import DataLoader

    data = BlockDataset(shards, "validation")

    def keys(workers: int, position: int, n: int) -> list[list[int]]:
        sampler = BlockSampler(data.chunk_sizes, batch_size=16, seed=3, window_chunks=2)
        sampler.position = position
        loader = DataLoader(
            data,
            sampler=sampler,
            batch_size=None,
            collate_fn=lambda b: (b.epoch * len(data) + b.block_index).tolist(),
            num_workers=workers,
            generator=torch.Generator().manual_seed(0),
        )
        return list(itertools.islice(loader, n))

    single = keys(0, 0, 80)  # 80 x 16 blocks: more than two epochs of the validation split
    assert keys(2, 0, 80) == single
    seen = [k for b in single for k in b]
    assert len(set(seen)) == len(seen) == 80 * 16
    assert {k % len(data) for k in seen if k // len(data) == 0} == set(range(len(data)))
    # resume mid-epoch from the state after 30 batches, with another worker count
    assert keys(1, 30 * 16, 50) == single[30:]


def write_shard(path: Path, reader: ShardReader, **changes: object) -> None:
    meta = reader.meta
    fields = {k: getattr(meta, k) for k in meta.__dataclass_fields__} | changes
    writer = ShardWriter(str(path), type(meta)(**fields), 2048, 3)
    writer.write(reader.read_all())
    writer.close()


def patch_manifest(out: Path, **tokenizer: object) -> None:
    path = out / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["tokenizer"].update(tokenizer)
    path.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("expect", "match"),
    [
        (DataExpectation(tokenizer_sha256="ab" * 32), "expects tokenizer sha256 abab"),
        (DataExpectation(block_size=512), "expects block size 512, found 128"),
        (DataExpectation(dtype="uint32"), "expects dtype uint32, found uint16"),
        (DataExpectation(num_embeddings=30_000), "below the model's 30000 embedding rows"),
    ],
)
def test_a_run_that_expects_other_data_is_refused(
    shards: str, expect: DataExpectation, match: str
) -> None:
    with pytest.raises(DataError, match=match):
        BlockDataset(shards, "train", expect=expect)


def test_a_vocabulary_that_fits_the_embedding_is_accepted(shards: str) -> None:
    data = BlockDataset(shards, "train", expect=DataExpectation(num_embeddings=30_522))
    assert len(data) > 0


def test_missing_or_resized_shards_are_refused(shards_copy: Path) -> None:
    victim = shards_copy / "train" / "shard-00002.arrow"
    victim.write_bytes(victim.read_bytes() + b"x")
    with pytest.raises(
        DataError,
        match=r"shard-00002.arrow: expected the shard the manifest lists, found a problem: "
        r"size differs: expected [\d,]+ bytes, found [\d,]+; rerun `pipeline run`",
    ):
        BlockDataset(str(shards_copy), "train")
    victim.unlink()
    with pytest.raises(
        DataError,
        match=r"shard-00002\.arrow: expected the shard the manifest lists, found a problem: "
        r"missing;",
    ):
        BlockDataset(str(shards_copy), "train")


def test_shard_metadata_that_disagrees_with_the_manifest_is_refused(shards_copy: Path) -> None:
    victim = shards_copy / "validation" / "shard-00001.arrow"
    write_shard(victim, ShardReader(str(victim)), tokenizer_sha256="0" * 64)
    manifest = json.loads((shards_copy / "manifest.json").read_text())
    record = manifest["splits"]["validation"]["shards"][1]
    record["num_bytes"] = victim.stat().st_size  # only the metadata differs now
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    data = BlockDataset(str(shards_copy), "validation")  # checked when first opened
    first_of_victim = int(manifest["splits"]["validation"]["shards"][0]["num_blocks"])
    with pytest.raises(
        DataError,
        match=r"shard-00001\.arrow: expected the shard the manifest lists, found a "
        r"problem: metadata tokenizer_sha256 is '0{64}', the manifest says",
    ):
        data[[first_of_victim]]
    first = shards_copy / "validation" / "shard-00000.arrow"  # the first shard: at open
    write_shard(first, ShardReader(str(first)), tokenizer_sha256="0" * 64)
    manifest["splits"]["validation"]["shards"][0]["num_bytes"] = first.stat().st_size
    (shards_copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DataError, match=r"shard-00000\.arrow: expected the shard the manifest"):
        BlockDataset(str(shards_copy), "validation")


def test_token_ids_beyond_the_vocabulary_are_refused_when_read(shards_copy: Path) -> None:
    patch_manifest(shards_copy, vocab_size=1000)  # the shards hold ids up to ~30 K
    data = BlockDataset(str(shards_copy), "validation")
    with pytest.raises(DataError, match="expected ids below vocab size 1000, found"):
        data[[0]]


def test_an_empty_split_or_an_old_format_is_refused(shards_copy: Path) -> None:
    path = shards_copy / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["splits"]["validation"]["num_blocks"] = 0
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="expected blocks in split 'validation', found 0"):
        BlockDataset(str(shards_copy), "validation")
    with pytest.raises(DataError, match="expected blocks in split 'test', found no such split"):
        BlockDataset(str(shards_copy), "test")
    manifest["format_version"] = 99
    path.write_text(json.dumps(manifest))
    with pytest.raises(DataError, match="expected format_version 1, found 99"):
        BlockDataset(str(shards_copy), "train")


def test_the_first_batch_imports_nothing_heavy(shards: str) -> None:
    """pandas (pulled in by Array.to_numpy), pyarrow.compute and numpy.ma cost 30-400 ms
    before a trainer's first batch, again in every DataLoader worker (issue 12)."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from pipeline.train.dataset import BlockDataset\n"
        "from pipeline.train.sampler import BlockSampler\n"
        f"data = BlockDataset({shards!r}, 'train', with_doc_ids=True)\n"
        "keys = next(iter(BlockSampler(data.chunk_sizes, batch_size=32, seed=0)))\n"
        "batch = data.fetch(keys)\n"
        "assert batch.tokens.shape == (32, 128) and batch.tokens.any()\n"
        "print(sorted(m for m in ('pandas', 'pyarrow.compute', 'numpy.ma') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_an_empty_key_list_is_an_empty_batch(shards: str) -> None:
    batch = BlockDataset(shards, "train").fetch([])
    assert batch.tokens.shape == (0, 128)
