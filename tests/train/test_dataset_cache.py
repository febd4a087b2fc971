"""An s3:// dataset mirrored locally for the trainer, with checksum checks."""

from __future__ import annotations

import fcntl
import multiprocessing
import threading
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import pytest

from pipeline.commands.verification import verify_output
from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.format.manifest import load_manifest
from pipeline.run.runner import LocalExecutor, run_pipeline
from pipeline.train.dataset_cache import local_dataset
from tests.conftest import BERT, make_config, upload_folder


def sidecar_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.glob("*/shard-*.json"))


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

    cars = sidecar_bytes(bert_output)
    assert local_dataset(uri, tmp_path / "cache")[1] == cars, "a second open: sidecars only"
    damaged = root / "train" / "shard-00003.arrow"
    data = bytearray(damaged.read_bytes())
    data[100] ^= 0xFF
    damaged.write_bytes(bytes(data))
    _, again = local_dataset(uri, tmp_path / "cache")
    assert again == damaged.stat().st_size + cars, "only the damaged shard is fetched again"
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


def mirror_after(barrier: Barrier, uri: str, cache: Path, results: multiprocessing.Queue) -> None:
    """One rank of a torchrun job: all of them open the same dataset at the same moment."""
    barrier.wait()
    results.put(local_dataset(uri, cache)[1])


def test_concurrent_ranks_download_once_and_share_the_cache(
    bert_output: Path, s3_bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/shards"
    upload_folder(bert_output, uri)
    ctx = multiprocessing.get_context("spawn")  # a fork would copy the S3 client's threads
    barrier, results = ctx.Barrier(2), ctx.Queue()
    ranks = [
        ctx.Process(target=mirror_after, args=(barrier, uri, tmp_path / "cache", results))
        for _ in range(2)
    ]
    for rank in ranks:
        rank.start()
    fetched = sorted(results.get(timeout=120) for _ in ranks)
    for rank in ranks:
        rank.join(timeout=60)
        assert rank.exitcode == 0
    root = tmp_path / "cache" / s3_bucket / "shards"
    everything = sum(p.stat().st_size for p in root.rglob("*") if p.is_file())
    everything -= (root / "manifest.json").stat().st_size  # parsed, not counted as fetched
    cars = sidecar_bytes(bert_output)
    # The lock: one rank downloaded all, the other waited and then only fetched the sidecars.
    assert fetched == [cars, everything] and cars > 0
    assert verify_output(str(root)) == []


def test_a_process_that_finds_the_mirror_locked_says_so_and_waits(
    bert_output: Path, s3_bucket: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    uri = f"s3://{s3_bucket}/shards"
    upload_folder(bert_output, uri)
    lock = tmp_path / "cache" / s3_bucket / "shards.lock"
    lock.parent.mkdir(parents=True)
    done: list[tuple[Path, int]] = []
    with open(lock, "a+b") as held:
        fcntl.flock(held, fcntl.LOCK_EX)  # another rank is mirroring
        cache = tmp_path / "cache"
        waiting = threading.Thread(  # a daemon: never outlives a failed test
            target=lambda: done.append(local_dataset(uri, cache)), daemon=True
        )
        waiting.start()
        deadline = time.monotonic() + 60
        err = ""
        while "waiting" not in err and time.monotonic() < deadline:
            time.sleep(0.05)
            err += capsys.readouterr().err
        assert f"data: waiting for another process mirroring {uri}" in err
        time.sleep(0.2)
        assert not done and not (lock.parent / "shards").exists(), "nothing before the lock"
    waiting.join(timeout=60)
    root, fetched = done[0]
    assert fetched > 0 and verify_output(str(root)) == []


def test_a_rebuilt_remote_dataset_replaces_the_cached_one(
    bert_output: Path, dictwiki_one_file: Path, s3_bucket: str, tmp_path: Path
) -> None:
    uri = f"s3://{s3_bucket}/shards"
    upload_folder(bert_output, uri)
    root, _ = local_dataset(uri, tmp_path / "cache")
    # Rebuilt from other input into the same URI: the same shard names, other bytes, fewer shards.
    rebuilt = tmp_path / "rebuilt"
    config = make_config(dictwiki_one_file, BERT, rebuilt, unit_bytes=256 * 1024)
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    for stale in storage.list_files(uri, recursive=True):
        storage.remove(stale)
    upload_folder(rebuilt, uri)
    old = sorted(p.relative_to(bert_output) for p in bert_output.glob("*/shard-*"))
    new = sorted(p.relative_to(rebuilt) for p in rebuilt.glob("*/shard-*"))
    assert set(new) < set(old), "the test needs shared names and files the rebuild dropped"

    root_again, fetched = local_dataset(uri, tmp_path / "cache")
    assert root_again == root and fetched > 0
    assert verify_output(str(root)) == [], "fresh sidecars, no left-over shards"
    assert sorted(p.relative_to(root) for p in root.glob("*/shard-*")) == new
    for name in new:
        assert (root / name).read_bytes() == (rebuilt / name).read_bytes(), name
    assert load_manifest(str(root)) == load_manifest(str(rebuilt))
