"""The forked child that works while a local Ray starts: hand-over, results, crashes, errors."""

from __future__ import annotations

import os
import time

import pytest

from pipeline.errors import DataError
from pipeline.process import UnitSummary
from pipeline.sources import WorkUnit
from pipeline.startup_worker import StartupWorker

UNITS = [
    WorkUnit(index=i, path="x.parquet", format="parquet", row_start=0, row_end=1, text_bytes=1)
    for i in range(6)
]


def _summary(unit: WorkUnit) -> UnitSummary:
    return UnitSummary(
        index=unit.index,
        path=unit.path,
        num_rows=1,
        num_documents=1,
        num_tokens=10,
        text_bytes=1,
        peak_rss_bytes=0,
    )


def _slow(unit: WorkUnit) -> UnitSummary:
    time.sleep(0.3)
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
    worker = StartupWorker(UNITS, _slow)
    time.sleep(0.75)  # about two units
    rest = worker.stop()
    done = worker.take_results() + worker.finish()
    assert 1 <= len(done) <= 4
    assert sorted(s.index for s in done) + [u.index for u in rest] == list(range(6))
    assert worker.lost() == []


def test_a_child_that_dies_loses_only_the_unit_in_hand() -> None:
    worker = StartupWorker(UNITS, _dies_on_2)
    time.sleep(0.5)
    rest = worker.stop()
    done = worker.take_results() + worker.finish()
    assert [u.index for u in rest] == [3, 4, 5] and [s.index for s in done] == [0, 1]
    assert [u.index for u in worker.lost()] == [2], "claimed, never reported: to be rerun"


def test_an_error_in_a_unit_reaches_the_driver() -> None:
    worker = StartupWorker(UNITS, _fails_on_1)
    time.sleep(0.3)
    worker.stop()
    with pytest.raises(DataError, match="found damage"):
        worker.take_results() + worker.finish()
