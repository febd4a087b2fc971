"""The one flock helper: a held lock refuses (pipeline run) or waits (the dataset cache)."""

from __future__ import annotations

import fcntl
import threading
import time
from pathlib import Path
from typing import BinaryIO

import pytest

from pipeline.errors import UsageError
from pipeline.format.locks import exclusive
from pipeline.run.output_folder import exclusive as exclusive_output


def _hold(path: Path) -> BinaryIO:
    """Take the lock through another open file, as another process would."""
    held = open(path, "a+b")  # noqa: SIM115
    fcntl.flock(held, fcntl.LOCK_EX)
    return held


def test_a_free_lock_is_taken_without_calling_on_busy(tmp_path: Path) -> None:
    calls = []
    with exclusive(tmp_path / "sub" / "x.lock", on_busy=lambda: calls.append(1)):
        assert (tmp_path / "sub" / "x.lock").is_file()
    with exclusive(tmp_path / "sub" / "x.lock", on_busy=lambda: calls.append(1)):
        pass  # released on exit
    assert calls == []


def test_a_second_run_in_one_output_is_refused_in_one_line(tmp_path: Path) -> None:
    with (
        exclusive_output(str(tmp_path)),
        pytest.raises(
            UsageError, match=r"expected no other run writing there, found one running \(it holds "
        ),
        exclusive_output(str(tmp_path)),
    ):
        pass


def test_a_busy_lock_waits_after_on_busy_returns(tmp_path: Path) -> None:
    path = tmp_path / "x.lock"
    path.touch()
    held = _hold(path)
    told = threading.Event()
    done = threading.Event()

    def waiter() -> None:
        with exclusive(path, on_busy=told.set):
            done.set()

    thread = threading.Thread(target=waiter)
    thread.start()
    assert told.wait(10)
    time.sleep(0.2)
    assert not done.is_set(), "it waits while the lock is held"
    held.close()  # the other holder finishes
    thread.join(10)
    assert done.is_set()
