"""An exclusive lock on a local file, for one writer at a time.

`fcntl.flock`: the kernel releases it when the process dies, so a crash never leaves a stale
lock behind. Used by `pipeline run` (OUT/.lock: one run per output folder) and by the
trainer's dataset cache (every rank of a job mirrors the same dataset; one downloads).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def exclusive(lock_file: Path, on_busy: Callable[[], None]) -> Iterator[None]:
    """Hold an exclusive lock on `lock_file` (created if need be) while the block runs.

    When another process holds it, `on_busy` is called: it may raise to refuse, or return
    (say, after telling the user why this process sits still) to wait for the lock.
    """
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(lock_file, os.O_CREAT | os.O_RDWR, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            on_busy()
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock
