"""Ray end to end: determinism over worker counts, a killed worker, a killed driver, and a
real cluster (`ray start --head` on 127.0.0.1) driven by `ray job submit`."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

from pipeline.format.manifest import load_manifest
from pipeline.run.faults import FAULT_MARKER_ENV, FAULT_UNIT_ENV
from pipeline.run.ray_runner import RayExecutor
from pipeline.run.runner import LocalExecutor, run_pipeline
from tests.conftest import BERT, DICTWIKI, REPO, UNIGRAM, damage_a_data_page, make_config
from tests.run.test_runner import _digest_tree

pytestmark = [pytest.mark.ray, pytest.mark.slow]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The undisturbed run, by the local executor, that every Ray run must equal byte for byte."""
    out = tmp_path_factory.mktemp("reference") / "out"
    run_pipeline(make_config(DICTWIKI, UNIGRAM, out), LocalExecutor(), progress_stream=None)
    return out


@pytest.mark.parametrize(
    ("workers", "work_while_starting"),
    [(1, False), (3, False), (2, True)],
    ids=["1-ray-worker", "3-ray-workers", "driver-child-then-ray"],
)
def test_output_is_identical_whatever_the_worker_count(
    tmp_path: Path, reference: Path, workers: int, work_while_starting: bool
) -> None:
    out = tmp_path / "out"
    executor = RayExecutor(workers=workers, work_while_starting=work_while_starting)
    result = run_pipeline(make_config(DICTWIKI, UNIGRAM, out), executor, progress_stream=None)
    assert result.num_units_run == result.num_units == 9
    assert result.manifest.splits["train"].num_blocks > 9_000
    assert result.manifest.tokenizer.dtype == "uint32"
    assert _digest_tree(out) == _digest_tree(reference)


def test_killed_worker_is_retried_and_output_identical(
    tmp_path: Path, reference: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    marker = tmp_path / "killed"
    monkeypatch.setenv(FAULT_UNIT_ENV, "4")
    monkeypatch.setenv(FAULT_MARKER_ENV, str(marker))
    out = tmp_path / "out"
    executor = RayExecutor(workers=2, work_while_starting=False)  # unit 4 dies in a Ray worker
    run_pipeline(make_config(DICTWIKI, UNIGRAM, out), executor, progress_stream=None)
    assert "killed unit 4" in marker.read_text(), "the fault really happened"
    assert _digest_tree(out) == _digest_tree(reference)


def test_killed_driver_then_rerun_gives_identical_output(tmp_path: Path, reference: Path) -> None:
    out = tmp_path / "out"
    cmd = [
        str(BIN / "pipeline"),
        "run",
        "--backend",
        "local",
        "--quiet",
        "--input",
        str(DICTWIKI),
        "--tokenizer",
        str(UNIGRAM),
        "--output",
        str(out),
        "--unit-bytes",
        str(512 * 1024),
    ]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 120
    while len(list(out.glob("validation/shard-*.json"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists(), "killed before it finished"
    done_before = len(list(out.glob("validation/shard-*.json")))
    assert 2 <= done_before < 9
    rerun = subprocess.run([*cmd[:-1], cmd[-1]], capture_output=True, text=True, check=True)
    assert "(" in rerun.stdout and "run now" in rerun.stdout
    assert (
        f"({9 - done_before} run now)" in rerun.stdout
        or f"({10 - done_before} run now)" in rerun.stdout
    )
    assert _digest_tree(out) == _digest_tree(reference)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_dashboard(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray dashboard on 127.0.0.1:{port} did not answer")


def test_ray_job_submit_on_a_real_cluster(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "RAY_AUTH_MODE": "disabled",
    }
    gcs, dash = _free_port(), _free_port()
    # Ray's Unix sockets live under --temp-dir: pytest's deep tmp_path exceeds their 107-byte limit.
    ray_tmp = tempfile.mkdtemp(prefix="rt-", dir="/tmp")
    start = [
        str(BIN / "ray"),
        "start",
        "--head",
        "--block",
        "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1",
        f"--port={gcs}",
        f"--dashboard-port={dash}",
        "--num-cpus=2",
        "--disable-usage-stats",
        f"--temp-dir={ray_tmp}",
    ]
    # Its own session, so that stopping it kills this cluster's processes and no other Ray's
    # (`ray stop` would stop every Ray on the machine).
    head = subprocess.Popen(
        start, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        _wait_for_dashboard(dash, head)
        out = tmp_path / "out"
        submit = [
            str(BIN / "ray"),
            "job",
            "submit",
            "--address",
            f"http://127.0.0.1:{dash}",
            "--working-dir",
            str(REPO),
            "--",
            "python",
            "jobs/preprocess.py",
            "--input",
            str(DICTWIKI),
            "--tokenizer",
            str(BERT),
            "--output",
            str(out),
            "--unit-bytes",
            str(1024 * 1024),
        ]
        job = subprocess.run(submit, env=env, capture_output=True, text=True, timeout=600)
        assert job.returncode == 0, job.stdout[-3000:] + job.stderr[-3000:]
        assert "succeeded" in job.stdout
        assert "units" in job.stdout, "the job logged progress lines"
        manifest = load_manifest(str(out))
        assert manifest.splits["train"].num_blocks > 10_000
        assert manifest.num_units >= 5
    finally:
        _stop_group(head)
        shutil.rmtree(ray_tmp, ignore_errors=True)


def _stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1)  # let the group's other members go too


def test_damaged_file_under_ray_is_one_clear_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.commands import cli

    data = tmp_path / "data"
    data.mkdir()
    damage_a_data_page(DICTWIKI / "train-00000-of-00004.parquet", data / "damaged.parquet")
    code = cli.main(
        [
            "run",
            "--quiet",
            "--workers",
            "2",
            "--input",
            str(data),
            "--tokenizer",
            str(BERT),
            "--output",
            str(tmp_path / "out"),
            "--unit-bytes",
            str(1 << 18),
        ]
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert err[-1].startswith("error: ") and "damaged.parquet: expected readable parquet" in err[-1]
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out" / "manifest.json").exists()
