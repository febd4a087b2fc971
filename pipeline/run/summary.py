"""What a finished unit reports to the driver: small counts, never documents or tokens."""

from __future__ import annotations

import resource
from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class UnitSummary:
    index: int
    path: str
    num_rows: int
    num_documents: int
    num_tokens: int
    text_bytes: int
    peak_rss_bytes: int  # of the worker process so far (Linux ru_maxrss is in KiB)


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM belongs to the address space, so it starts
    afresh at exec; ru_maxrss does not (Linux keeps it across execve, so a process started
    from a big parent reports the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
