"""Ray end to end: determinism over worker counts, a killed worker, a killed driver. The real
cluster (`ray start --head`, token auth on, `ray job submit`) is in test_ray_cluster.py."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.run.faults import FAULT_MARKER_ENV, FAULT_UNIT_ENV
from pipeline.run.ray_runner import RayExecutor
from pipeline.run.runner import LocalExecutor, run_pipeline
from tests.conftest import BERT, DICTWIKI, UNIGRAM, damage_a_data_page, make_config
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
