"""Live progress of a run: documents, tokens/s and ETA from the planned text bytes.

On a terminal it redraws one line; otherwise (a Ray job's log, CI) it prints a line at most
every `interval` seconds, so logs stay readable.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO

from pipeline.run.summary import UnitSummary


class Progress:
    def __init__(
        self, total_units: int, total_bytes: int, stream: TextIO = sys.stderr, interval: float = 5
    ) -> None:
        self.total_units = total_units
        self.total_bytes = max(total_bytes, 1)
        self.stream = stream
        self.interval = interval
        self.tty = stream.isatty()
        self.start = time.monotonic()
        self.last = 0.0
        self.units = self.documents = self.tokens = self.bytes = 0

    def update(self, summary: UnitSummary) -> None:
        self.units += 1
        self.documents += summary.num_documents
        self.tokens += summary.num_tokens
        self.bytes += summary.text_bytes
        now = time.monotonic()
        if self.tty or now - self.last >= self.interval or self.units == self.total_units:
            self.last = now
            self._print(now)

    def _print(self, now: float) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = self.tokens / elapsed
        done = min(self.bytes / self.total_bytes, 1.0)
        eta = elapsed * (1 - done) / done if done > 0 else float("nan")
        line = (
            f"units {self.units}/{self.total_units}  documents {self.documents:,}  "
            f"tokens {self.tokens:,}  {rate / 1e6:.2f} M tokens/s  "
            f"elapsed {elapsed:.0f}s  ETA {eta:.0f}s"
        )
        if self.tty:
            end = "\n" if self.units == self.total_units else ""
            self.stream.write("\r" + line.ljust(100) + end)
        else:
            self.stream.write(line + "\n")
        self.stream.flush()
