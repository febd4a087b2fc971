"""The forked child that works while a local Ray starts: hand-over, results, crashes, errors."""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import pytest

from pipeline.errors import DataError
from pipeline.ingest.units import WorkUnit
from pipeline.run.startup_worker import StartupWorker
from pipeline.run.summary import UnitSummary

UNITS = [
    WorkUnit(index=i, path="x.parquet", format="parquet", row_start=0, row_end=1, text_bytes=1)
    for i in range(6)
]


def _summary(unit: WorkUnit) -> UnitSummary:
    return UnitSummary(index=unit.index, path=unit.path, num_rows=1, num_documents=1,
                       num_tokens=10, text_bytes=1, peak_rss_bytes=0)  # fmt: skip


def _slow(unit: WorkUnit) -> UnitSummary:
    time.sleep(0.2)
    return _summary(unit)


def _dies_on_2(unit: WorkUnit) -> UnitSummary:
    if unit.index == 2:
        os._exit(137)
    return _summary(unit)


def _fails_on_1(unit: WorkUnit) -> UnitSummary:
    if unit.index == 1:
        raise DataError("x.parquet: expected rows, found damage")
    return _summary(unit)


def test_hand_over_splits_the_units_without_overlap_or_gap() -> None:
    """Whenever the driver stops the child, every unit is done exactly once: by the child or
    by whoever takes the rest (how many the child did depends on timing, and does not matter)."""
    for wait in (0.0, 0.3, 2.0):
        worker = StartupWorker(UNITS, _slow)
        time.sleep(wait)
        rest = worker.stop()
        done = worker.take_results() + worker.finish()
        assert sorted(s.index for s in done) + [u.index for u in rest] == list(range(6))
        assert worker.lost() == []


def test_a_child_that_dies_loses_only_the_unit_in_hand() -> None:
    worker = StartupWorker(UNITS, _dies_on_2)
    done = worker.finish()  # returns once the child has died
    rest = worker.stop()
    assert [s.index for s in done] == [0, 1]
    assert [u.index for u in worker.lost()] == [2], "claimed, never reported: to be rerun"
    assert [u.index for u in rest] == [3, 4, 5]


def test_an_error_in_a_unit_reaches_the_driver() -> None:
    worker = StartupWorker(UNITS, _fails_on_1)
    with pytest.raises(DataError, match="found damage"):
        worker.finish()


def _driver(pid_file: str) -> None:
    worker = StartupWorker(UNITS, lambda u: time.sleep(60) or _summary(u))
    Path(pid_file).write_text(str(worker._process.pid))
    time.sleep(120)


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return False
    return "\nState:\tZ" not in state  # a zombie waiting for a reaper is dead


def test_the_child_dies_with_a_killed_driver(tmp_path: Path) -> None:
    """No orphan keeps writing into the output after its driver is SIGKILLed."""
    pid_file = tmp_path / "child.pid"
    driver = mp.get_context("fork").Process(target=_driver, args=(str(pid_file),))
    driver.start()
    deadline = time.monotonic() + 30
    while not pid_file.exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    child = int(pid_file.read_text())
    assert _alive(child)
    os.kill(driver.pid, signal.SIGKILL)
    driver.join()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not _alive(child)
