"""An s3:// dataset mirrored locally for the trainer, with checksum checks."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline import storage
from pipeline.dataset_cache import local_dataset
from pipeline.errors import DataError
from pipeline.manifest import load_manifest
from pipeline.verification import verify_output
from tests.conftest import upload_folder


def test_local_path_is_used_as_is(bert_output: Path) -> None:
    assert local_dataset(str(bert_output)) == (bert_output, 0)


def test_s3_dataset_is_cached_checked_and_refetched(
    bert_output: Path, s3_bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/shards"
    upload_folder(bert_output, uri)
    root, fetched = local_dataset(uri, tmp_path / "cache")
    total = sum(p.stat().st_size for p in bert_output.glob("*/shard-*.arrow"))
    assert fetched > total > 0
    assert load_manifest(str(root)) == load_manifest(str(bert_output))
    assert verify_output(str(root)) == [], "the cache is a complete, valid dataset"

    assert local_dataset(uri, tmp_path / "cache")[1] == 0, "a second open fetches nothing"
    damaged = root / "train" / "shard-00003.arrow"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    _, again = local_dataset(uri, tmp_path / "cache")
    assert again == damaged.stat().st_size, "only the damaged shard is fetched again"
    assert verify_output(str(root)) == []


def test_damaged_remote_shard_is_refused(bert_output: Path, s3_bucket: str, tmp_path: Path) -> None:
    uri = f"s3://{s3_bucket}/shards"
    upload_folder(bert_output, uri)
    shard = f"{uri}/validation/shard-00001.arrow"
    data = bytearray(storage.read_bytes(shard))
    data[-50] ^= 0x01
    storage.write_bytes_atomic(shard, bytes(data))
    with pytest.raises(
        DataError, match=r"shard-00001.arrow: expected sha256 .* the stored dataset"
    ):
        local_dataset(uri, tmp_path / "cache")


def test_unfinished_remote_run_is_refused(s3_bucket: str, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected the manifest of a finished run"):
        local_dataset(f"s3://{s3_bucket}/nothing", tmp_path / "cache")
