"""A test hook for fault injection: the first attempt of one unit exits hard mid-way.

Set by the fault tests (killed worker, killed driver) through the environment, so that it
reaches Ray workers too; unset, it costs one dictionary lookup per unit.
"""

from __future__ import annotations

import os

FAULT_UNIT_ENV = "PIPELINE_FAULT_KILL_UNIT"
FAULT_MARKER_ENV = "PIPELINE_FAULT_MARKER"


def maybe_inject_fault(index: int) -> None:
    target, marker = os.environ.get(FAULT_UNIT_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target is None or marker is None or int(target) != index or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"killed unit {index} in pid {os.getpid()}\n")
    os._exit(137)
