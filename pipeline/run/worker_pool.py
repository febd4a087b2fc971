"""The single-machine default: a pool of forked worker processes that run `process_unit`.

Forked from the driver after it has loaded the tokenizer (and seeded the encoder cache), a
worker starts in milliseconds with the tokenizer already in memory; this is how datatrove's
local executor and litdata run on one machine. Measured on this 2-core machine (README,
"Performance"): the pool's fixed cost is ~0.05 s, where `ray.init` + `ray.shutdown()` of a
local Ray cost 5-9 s. Ray stays the engine for clusters (`--backend ray`, `--ray-address`).

The driver hands out one unit at a time over a pipe per worker, in unit order, and gets a
`UnitSummary` back; it alone commits the manifest, exactly as with every other executor, so the
output bytes do not depend on the executor or the number of workers. A worker that dies (OOM
killer, `kill -9`) loses only the unit in hand: it is retried on a fresh worker up to
`max_retries` times, then the run fails with one line and resumes when rerun. Workers ignore
SIGINT: on Ctrl-C the driver alone gets KeyboardInterrupt, and `close()` (run from the
generator's `finally`, whatever exception ends the run) stops the workers before it propagates.

With object storage in the run (s3://), workers are spawned, not forked: forking after the AWS
SDK has started threads is unsafe. A spawned worker loads the tokenizer from OUT/tokenizer.json.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
from collections import deque
from collections.abc import Callable, Iterator
from functools import partial
from multiprocessing.connection import Connection, wait
from typing import Any

from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.ingest.units import WorkUnit
from pipeline.run.config import RunConfig
from pipeline.run.process import process_unit
from pipeline.run.startup_worker import die_with
from pipeline.run.summary import UnitSummary

Work = Callable[[WorkUnit], UnitSummary]
_STOP_SECONDS = 2.0  # a worker asked to stop gets this long before SIGKILL


def _serve(conn: Connection, work: Work, threads: int, parent: int) -> None:
    """A worker: receive a unit, run it, send ("ok", summary) or ("error", exception)."""
    die_with(parent)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the driver's to handle
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the driver's handler, if it has one
    os.environ["RAYON_NUM_THREADS"] = str(threads)  # before the tokenizer's first batch
    if threads == 1:
        # Encode on this thread, not hand each batch to a one-thread Rayon pool: the same CPU
        # (measured), one thread fewer, and a profiler sees the tokenizer's time in the worker.
        os.environ["TOKENIZERS_PARALLELISM"] = "false"
    while True:
        try:
            unit = conn.recv()
        except EOFError:  # the driver is gone
            return
        if unit is None:
            return
        try:
            reply: tuple[str, Any] = ("ok", work(unit))
        except BaseException as exc:  # reported to the driver, which raises it
            reply = ("error", exc)
        try:
            conn.send(reply)
        except Exception as exc:  # an exception that does not pickle: its text then
            conn.send(("error", RuntimeError(f"{type(reply[1]).__name__}: {reply[1]} ({exc})")))


class _Worker:
    def __init__(self, ctx: Any, work: Work, threads: int) -> None:
        self.conn, child_end = ctx.Pipe(duplex=True)
        self.process = ctx.Process(
            target=_serve,
            args=(child_end, work, threads, os.getpid()),
            name="pipeline-worker",
            daemon=True,
        )
        self.process.start()
        child_end.close()
        self.unit: WorkUnit | None = None

    def give(self, unit: WorkUnit | None) -> None:
        self.unit = unit
        self.conn.send(unit)

    def death(self) -> str:
        self.process.join()
        code = self.process.exitcode or 0
        if code < 0:
            return f"killed by {signal.Signals(-code).name}"
        return f"exited with code {code}"


class ProcessExecutor:
    """Runs units in `workers` forked processes of this machine (default: one per core)."""

    def __init__(
        self, *, workers: int | None = None, threads_per_worker: int = 1, max_retries: int = 2
    ) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.threads = threads_per_worker
        self.max_retries = max_retries
        self._pool: list[_Worker] = []

    def run(
        self, units: list[WorkUnit], config: RunConfig, tokenizer_sha256: str, digest: str
    ) -> Iterator[UnitSummary]:
        if not units:
            return
        remote = storage.is_remote(config.output) or any(map(storage.is_remote, config.inputs))
        ctx = mp.get_context("spawn" if remote else "fork")
        work = partial(
            process_unit, config=config, tokenizer_sha256=tokenizer_sha256, run_digest=digest
        )
        try:
            yield from self._run(ctx, work, units)
        finally:
            self.close()

    def _run(self, ctx: Any, work: Work, units: list[WorkUnit]) -> Iterator[UnitSummary]:
        queue = deque(units)
        attempts: dict[int, int] = {}
        for _ in range(min(self.workers, len(units))):
            worker = _Worker(ctx, work, self.threads)
            self._pool.append(worker)
            worker.give(queue.popleft())
        while any(w.unit is not None for w in self._pool):
            busy = [w for w in self._pool if w.unit is not None]
            wait([w.conn for w in busy] + [w.process.sentinel for w in busy])
            for worker in busy:
                unit = worker.unit
                assert unit is not None
                reply = self._reply(worker)
                if reply is not None:
                    kind, value = reply
                    if kind == "error":
                        raise value
                    worker.give(queue.popleft() if queue else None)
                    yield value
                elif not worker.process.is_alive():
                    attempts[unit.index] = attempts.get(unit.index, 0) + 1
                    death = worker.death()
                    if attempts[unit.index] > self.max_retries:
                        raise DataError(
                            f"{unit.path}: expected work unit {unit.index} to finish, found "
                            f"its worker process {death} {attempts[unit.index]} times; look for "
                            "out-of-memory kills (dmesg), lower --unit-bytes or --workers, then "
                            "rerun the same command to resume"
                        )
                    self._pool.remove(worker)
                    replacement = _Worker(ctx, work, self.threads)
                    self._pool.append(replacement)
                    replacement.give(unit)

    @staticmethod
    def _reply(worker: _Worker) -> tuple[str, Any] | None:
        """The worker's reply if one is there (a reply sent before an exit is read first)."""
        if not worker.conn.poll():
            return None
        try:
            return worker.conn.recv()
        except EOFError:  # it died: the pipe's end closed with it
            worker.process.join()
            return None

    def close(self) -> None:
        """Stop every worker (the unit in hand is abandoned: its shards are not published, a
        rerun redoes it). Safe to call twice; the driver's signal handlers may call it."""
        pool, self._pool = self._pool, []
        for worker in pool:
            if worker.process.is_alive() and worker.unit is not None:
                worker.process.terminate()
            else:
                with contextlib.suppress(OSError):  # it exited already
                    worker.conn.send(None)
        for worker in pool:
            worker.process.join(_STOP_SECONDS)
            if worker.process.is_alive():
                worker.process.kill()
                worker.process.join()
            worker.conn.close()
