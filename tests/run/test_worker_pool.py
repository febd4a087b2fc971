"""The process pool under faults: a killed worker, a worker that keeps dying, Ctrl-C.

(Its determinism over worker counts is in test_runner.py, beside the in-process reference.)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.errors import DataError
from pipeline.run.faults import FAULT_MARKER_ENV, FAULT_PAUSE_ENV, FAULT_UNIT_ENV
from pipeline.run.runner import LocalExecutor, run_pipeline
from pipeline.run.worker_pool import ProcessExecutor
from tests.conftest import BERT, REPO
from tests.run.test_runner import _digest_tree, make_config

UNIT = 256 * 1024  # one dictwiki file -> 4 units


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dictwiki_one_file: Path) -> Path:
    out = tmp_path_factory.mktemp("pool-reference") / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=UNIT)
    assert run_pipeline(config, LocalExecutor(), progress_stream=None).num_units == 4
    return out


def test_a_killed_worker_is_replaced_and_its_unit_redone(
    tmp_path: Path, reference: Path, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_UNIT_ENV, "3")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    out = tmp_path / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=UNIT)
    result = run_pipeline(config, ProcessExecutor(workers=2), progress_stream=None)
    assert "killed unit 3" in marker.read_text(), "the fault really happened"
    assert result.num_units_run == 4 and result.num_tokens > 100_000
    assert _digest_tree(out) == _digest_tree(reference)


def test_a_worker_killed_mid_write_leaves_no_temporary_file(
    tmp_path: Path, reference: Path, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker dies between writing `.shard-00001.arrow.tmp-PID` and renaming it: the unit is
    redone, the dead worker's temporary file removed, and `verify` passes."""
    from pipeline.commands.verification import verify_output

    marker, driver, real_fsync = tmp_path / "killed", os.getpid(), os.fsync

    def fsync(fd: int) -> None:  # forked workers inherit it; the driver's own writes pass
        name = os.readlink(f"/proc/self/fd/{fd}")
        if os.getpid() != driver and ".shard-00001.arrow.tmp-" in name and not marker.exists():
            marker.write_text(f"killed writing {name}\n")
            os._exit(137)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    out = tmp_path / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=UNIT)
    result = run_pipeline(config, ProcessExecutor(workers=2), progress_stream=None)
    assert ".shard-00001.arrow.tmp-" in marker.read_text(), "the fault really happened"
    assert result.num_units_run == 4 and result.num_tokens > 100_000
    assert not [p.name for p in out.rglob(".*tmp-*")]
    assert verify_output(str(out)) == []
    assert _digest_tree(out) == _digest_tree(reference)


def test_a_worker_that_keeps_dying_fails_the_run_with_one_line(
    tmp_path: Path, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(FAULT_UNIT_ENV, "2")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(tmp_path / "killed"))
    out = tmp_path / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=UNIT)
    with pytest.raises(DataError, match=r"expected work unit 2 to finish, found its worker .*"
                       r"exited with code 137 1 times; .*rerun the same command"):  # fmt: skip
        run_pipeline(config, ProcessExecutor(workers=2, max_retries=0), progress_stream=None)
    assert not (out / "manifest.json").exists()


def _default_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_stops_every_process_with_one_line_and_the_rerun_resumes(
    tmp_path: Path, reference: Path, dictwiki_one_file: Path
) -> None:
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "pipeline.commands.cli", "run", "--quiet", "--workers", "2",
           "--input", str(dictwiki_one_file), "--tokenizer", str(BERT), "--output", str(out),
           "--unit-bytes", str(UNIT)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    # The last unit stops mid-way until killed: the interrupt surely lands in a running run
    # (waiting for a first shard left ~0.2 s of work: a race).
    marker = tmp_path / "paused"
    paused = {**env, FAULT_PAUSE_ENV: "3", FAULT_MARKER_ENV: str(marker)}
    # A terminal's Ctrl-C signals the whole foreground process group: driver and workers.
    # SIGINT back to its default first: a shell ignores it in the jobs it starts with `&`, the
    # ignoring is inherited, and Python then installs no KeyboardInterrupt handler (CI run in
    # the background: the run went on, exit 0, or hung on the paused unit).
    proc = subprocess.Popen(cmd, cwd=REPO, env=paused, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, preexec_fn=_default_sigint)  # fmt: skip
    deadline = time.monotonic() + 120
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert list(out.glob("*/shard-*.json")), "a unit before the paused one has finished"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["interrupted: rerun the same command to resume"]
    assert not (out / "manifest.json").exists()
    time.sleep(0.2)
    with pytest.raises(ProcessLookupError):  # no worker outlived the driver
        os.killpg(proc.pid, 0)
    rerun = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=True)
    assert "run now)" in rerun.stdout and "(4 run now)" not in rerun.stdout
    assert _digest_tree(out) == _digest_tree(reference)


def test_with_object_storage_the_workers_are_spawned_and_write_the_same_shards(
    s3_bucket: str, reference: Path, dictwiki_one_file: Path
) -> None:
    """Forking after the AWS SDK started its threads is unsafe: spawned workers load the
    tokenizer from OUT/tokenizer.json on S3 instead, and write the same bytes."""
    from pipeline.format.manifest import Manifest, load_manifest
    from tests.conftest import upload_folder

    data, out = f"s3://{s3_bucket}/data", f"s3://{s3_bucket}/shards"
    upload_folder(dictwiki_one_file, data)
    config = make_config(data, BERT, out, unit_bytes=UNIT)  # type: ignore[arg-type]
    result = run_pipeline(config, ProcessExecutor(workers=2), progress_stream=None)
    assert result.num_units_run == 4 and result.num_tokens > 100_000

    def digests(manifest: Manifest) -> list[str]:
        return [s.sha256 for split in manifest.splits.values() for s in split.shards]

    assert digests(result.manifest) == digests(load_manifest(str(reference)))
