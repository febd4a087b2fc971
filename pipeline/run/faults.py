"""Test hooks for fault injection: the first attempt of one unit exits hard mid-way, or one
unit stops mid-way until it is killed (so a test can interrupt a run that is surely running).

Set by the fault tests (killed worker, killed driver, Ctrl-C) through the environment, so that
they reach Ray workers too; unset, they cost two dictionary lookups per unit.
"""

from __future__ import annotations

import os
import time

FAULT_UNIT_ENV = "PIPELINE_FAULT_KILL_UNIT"
FAULT_PAUSE_ENV = "PIPELINE_FAULT_PAUSE_UNIT"
FAULT_MARKER_ENV = "PIPELINE_FAULT_MARKER"


def maybe_inject_fault(index: int) -> None:
    paused = os.environ.get(FAULT_PAUSE_ENV)
    if paused is not None and int(paused) == index:
        with open(os.environ[FAULT_MARKER_ENV], "w") as f:
            f.write(f"paused unit {index} in pid {os.getpid()}\n")
        time.sleep(3600)
    target, marker = os.environ.get(FAULT_UNIT_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target is None or marker is None or int(target) != index or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"killed unit {index} in pid {os.getpid()}\n")
    os._exit(137)
