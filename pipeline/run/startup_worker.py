"""Work while a local Ray starts: a forked child of the driver processes units in order.

Starting a local Ray costs 5-9 s on the 2-core machines this was measured on (raylet
registration, API server), all of it before the first task runs. A thread cannot use that
time (the tokenizer holds the GIL: measured, ray.init went from 9 s to 17 s beside one), so a
child process forked *before* ray.init claims units one by one until the driver calls
`stop()`; Ray gets the rest. The child runs the same `process_unit`, so output bytes do not
depend on who did a unit. A unit the child claimed but never reported (it died) is returned
by `lost()` for the driver to run again.
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import signal
from collections.abc import Callable
from typing import Any

from pipeline.ingest.units import WorkUnit
from pipeline.run.summary import UnitSummary

Work = Callable[[WorkUnit], UnitSummary]
PR_SET_PDEATHSIG = 1  # <linux/prctl.h>


def die_with(parent: int) -> None:
    """Ask Linux to kill this child when the driver dies (SIGKILL included), so no orphan
    keeps writing into an output folder that a rerun is using."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the getppid() check per unit remains
        pass
    if os.getppid() != parent:  # the driver died before prctl took effect
        os._exit(1)


def _child(
    units: list[WorkUnit], work: Work, next_unit: Any, stopped: Any, out: Any, parent: int
) -> None:
    die_with(parent)
    # The driver handles Ctrl-C and SIGTERM (one line, then it stops this child): here they
    # must end the process quietly, with no traceback of a unit cut short.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    while True:
        if os.getppid() != parent:
            os._exit(1)
        with next_unit.get_lock():
            if stopped.value or next_unit.value >= len(units):
                return
            index = next_unit.value
            next_unit.value += 1
        try:
            out.send(("ok", index, work(units[index])))
        except BaseException as exc:  # reported to the driver, which raises it
            out.send(("error", index, exc))
            return


class StartupWorker:
    def __init__(self, units: list[WorkUnit], work: Work) -> None:
        ctx = mp.get_context("fork")  # inherits the loaded modules: starts in milliseconds
        self._units = units
        self._next = ctx.Value("i", 0)
        self._stopped = ctx.Value("b", 0)
        # A pipe, not a Queue: send() is synchronous, so a result reported is a result sent
        # even if the child dies next (a Queue's feeder thread dies with it, unflushed).
        self._out, child_end = ctx.Pipe(duplex=False)
        self._claimed = len(units)
        self._reported: set[int] = set()
        self._process = ctx.Process(
            target=_child,
            args=(units, work, self._next, self._stopped, child_end, os.getpid()),
            name="pipeline-startup-worker",
            daemon=True,
        )
        self._process.start()
        child_end.close()  # the child's copy is the only writer: EOF once it exits

    def stop(self) -> list[WorkUnit]:
        """Claim no more units; returns the units the child will not do."""
        with self._next.get_lock():
            self._stopped.value = 1
            self._claimed = self._next.value
        return self._units[self._claimed :]

    def take_results(self, wait: bool = False) -> list[UnitSummary]:
        """Results reported so far (all of them when `wait`: until the child has exited)."""
        done = []
        while wait or self._out.poll():
            try:
                kind, index, value = self._out.recv()
            except EOFError:  # the child exited (or died) and everything sent was read
                break
            self._reported.add(index)
            if kind == "error":
                self.close()
                raise value
            done.append(value)
        return done

    def finish(self) -> list[UnitSummary]:
        """Wait for the unit in hand, if any, and return the results not yet taken."""
        done = self.take_results(wait=True)
        self._process.join()
        return done

    def lost(self) -> list[WorkUnit]:
        """Units the child claimed but did not report (it died): to be run again."""
        return [u for i, u in enumerate(self._units[: self._claimed]) if i not in self._reported]

    def close(self) -> None:
        self.stop()
        if self._process.is_alive():
            self._process.terminate()
        self._process.join()
