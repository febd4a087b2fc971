"""Object storage end to end: s3:// inputs and outputs on a real S3 API (moto, loopback)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from pipeline.commands import cli
from pipeline.commands.verification import verify_output
from pipeline.format import storage
from pipeline.format.manifest import Manifest, load_manifest
from pipeline.run.runner import LocalExecutor, run_pipeline
from tests.conftest import BERT, make_config, upload_folder


def _shard_digests(manifest: Manifest) -> list[str]:
    return [s.sha256 for split in manifest.splits.values() for s in split.shards]


@pytest.fixture(scope="module")
def local_reference(tmp_path_factory: pytest.TempPathFactory, dictwiki_one_file: Path) -> dict:
    out = tmp_path_factory.mktemp("s3-ref") / "out"
    return run_pipeline(
        make_config(dictwiki_one_file, BERT, out, unit_bytes=256 * 1024),
        LocalExecutor(),
        progress_stream=None,
    ).manifest


def test_s3_in_s3_out_resume_and_verify(
    s3_bucket: str, dictwiki_one_file: Path, local_reference: dict
) -> None:
    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards"
    upload_folder(dictwiki_one_file, data)
    config = make_config(data, BERT, out, unit_bytes=256 * 1024)  # type: ignore[arg-type]
    first = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert first.manifest.splits["train"].num_blocks > 2000
    # The same shard bytes as a local run: storage changes nothing.
    assert _shard_digests(first.manifest) == _shard_digests(local_reference)
    assert load_manifest(out) == first.manifest
    assert verify_output(out) == []

    # Resume on S3: a lost shard object and no manifest -> only that unit is redone.
    storage.remove(f"{out}/train/shard-00002.arrow")
    storage.remove(f"{out}/manifest.json")
    with pytest.raises(ValueError, match="manifest"):
        load_manifest(out)
    again = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert again.num_units_run == 1
    assert again.manifest == first.manifest and verify_output(out) == []


@pytest.mark.ray
@pytest.mark.slow
def test_s3_with_ray_workers_through_the_cli(
    s3_bucket: str,
    s3_server: str,
    dictwiki_one_file: Path,
    local_reference: dict,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Ray workers read and write S3 with the endpoint given as a flag."""
    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards"
    upload_folder(dictwiki_one_file, data)
    code = cli.main(
        [
            "run",
            "--quiet",
            "--workers",
            "2",
            "--input",
            data,
            "--tokenizer",
            str(BERT),
            "--output",
            out,
            "--unit-bytes",
            str(256 * 1024),
            "--storage-endpoint",
            s3_server,
        ]
    )
    assert code == 0, capsys.readouterr().err
    manifest = load_manifest(out)
    assert _shard_digests(manifest) == _shard_digests(local_reference)
    assert manifest.splits["train"].num_blocks > 2000


def test_two_runs_into_one_s3_output_are_refused_by_the_lock_object(
    s3_bucket: str, dictwiki_one_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.errors import UsageError
    from pipeline.run.output_lock import object_lock

    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards"
    upload_folder(dictwiki_one_file, data)
    config = make_config(data, BERT, out, unit_bytes=1 << 20)  # type: ignore[arg-type]
    with object_lock(out):  # another run holds the output
        assert storage.exists(f"{out}/.lock")
        with pytest.raises(UsageError, match=r"found the lock of one \(\.lock: host .*pid"):
            run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert not storage.exists(f"{out}/.lock"), "released on exit"

    # A lock whose owner stopped beating (a run killed with SIGKILL) is taken over.
    storage.write_bytes_atomic(f"{out}/.lock", json.dumps({"token": "x", "heartbeat": 0}).encode())
    result = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert result.manifest.splits["train"].num_blocks > 2000
    assert not storage.exists(f"{out}/.lock")


def test_a_store_without_conditional_writes_runs_unguarded_and_says_so(
    s3_bucket: str,
    dictwiki_one_file: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    def unsupported(uri: str, data: bytes) -> bool:
        raise storage.ConditionalWriteUnsupported(f"{uri}: the store answered NotImplemented")

    monkeypatch.setattr(storage, "create_if_absent", unsupported)
    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards"
    upload_folder(dictwiki_one_file, data)
    config = make_config(data, BERT, out, unit_bytes=1 << 20)  # type: ignore[arg-type]
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    err = capsys.readouterr().err
    assert "no lock against a second run" in err and "NotImplemented" in err
    assert load_manifest(out).num_units >= 1


def test_create_if_absent_creates_once(s3_bucket: str, tmp_path: Path) -> None:
    for uri in (f"s3://{s3_bucket}/x/lock", str(tmp_path / "x" / "lock")):
        assert storage.create_if_absent(uri, b"first") is True
        assert storage.create_if_absent(uri, b"second") is False
        assert storage.read_bytes(uri) == b"first"


def test_every_command_that_reads_s3_takes_storage_endpoint(
    s3_bucket: str, s3_server: str, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.train.config import parse_config

    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards"
    upload_folder(dictwiki_one_file, data)
    run_pipeline(
        make_config(data, BERT, out, unit_bytes=1 << 20),  # type: ignore[arg-type]
        LocalExecutor(),
        progress_stream=None,
    )
    monkeypatch.delenv(storage.ENDPOINT_ENV)  # only the flag says where the store is
    assert cli.main(["verify", out, "--storage-endpoint", s3_server]) == 0
    monkeypatch.delenv(storage.ENDPOINT_ENV)
    assert cli.main(["inspect", "--json", out, "--storage-endpoint", s3_server]) == 0
    monkeypatch.delenv(storage.ENDPOINT_ENV)
    cfg = parse_config(["--data", out, "--model", "m", "--output", "o", "--storage-endpoint",
                        s3_server])  # fmt: skip
    assert cfg.data == out and os.environ[storage.ENDPOINT_ENV] == s3_server
