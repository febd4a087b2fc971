"""The only module that imports Ray: runs `process.process_unit` as Ray tasks.

Each task reserves `threads_per_worker` CPUs and its tokenizer runs on exactly that many Rayon
threads (RAYON_NUM_THREADS), so tasks never over-subscribe the cores: measured here, single-
thread tokenizers in N processes beat one process with N Rayon threads by ~15 %. Tasks are
retried when a worker process dies; a unit writes its shards atomically, so a retry redoes it
from the start. The driver only receives small summaries, never documents or tokens.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from functools import partial

import ray

from pipeline.errors import DataError, PipelineError, brief
from pipeline.format import storage
from pipeline.format.storage import ENDPOINT_ENV
from pipeline.ingest.units import WorkUnit
from pipeline.run.config import RunConfig
from pipeline.run.faults import FAULT_MARKER_ENV, FAULT_UNIT_ENV
from pipeline.run.process import process_unit
from pipeline.run.startup_worker import StartupWorker
from pipeline.run.summary import UnitSummary

PASSED_ENV = (
    FAULT_UNIT_ENV,
    FAULT_MARKER_ENV,
    ENDPOINT_ENV,
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)


class RayExecutor:
    """Runs units on a Ray cluster (`address`) or on a local Ray started here (`workers`)."""

    def __init__(
        self,
        *,
        workers: int | None = None,
        address: str | None = None,
        threads_per_worker: int = 1,
        max_retries: int = 3,
        work_while_starting: bool = True,
    ) -> None:
        self.workers = workers
        self.address = address
        self.threads = threads_per_worker
        self.max_retries = max_retries
        self.work_while_starting = work_while_starting
        self._started_here = False

    def _connect(self) -> None:
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, log_to_driver=True)
        else:
            cpus = (self.workers or os.cpu_count() or 1) * self.threads
            os.environ["RAYON_NUM_THREADS"] = str(self.threads)  # inherited by local workers
            ray.init(
                num_cpus=cpus,
                include_dashboard=False,
                object_store_memory=128 * 1024 * 1024,
                log_to_driver=True,
                configure_logging=False,
                _node_ip_address="127.0.0.1",  # as `ray start --node-ip-address=127.0.0.1`
            )
            self._started_here = True

    def run(
        self, units: list[WorkUnit], config: RunConfig, tokenizer_sha256: str, digest: str
    ) -> Iterator[UnitSummary]:
        if not units:
            return
        early = None
        remote = storage.is_remote(config.output) or any(map(storage.is_remote, config.inputs))
        # Not with object storage: forking after the AWS SDK has started threads is unsafe.
        if (
            self.work_while_starting
            and not self.address
            and not ray.is_initialized()
            and not remote
        ):
            # A local Ray takes 5-9 s to start here; meanwhile a forked child of this process
            # works through units (see startup_worker.py), and Ray gets what is left.
            os.environ["RAYON_NUM_THREADS"] = str(self.threads)
            early = StartupWorker(
                units,
                partial(
                    process_unit,
                    config=config,
                    tokenizer_sha256=tokenizer_sha256,
                    run_digest=digest,
                ),
            )
        try:
            self._connect()
            if early:
                units = early.stop()
                yield from early.take_results()
            yield from self._run_on_ray(units, config, tokenizer_sha256, digest)
            if early:
                yield from early.finish()
                yield from self._run_on_ray(early.lost(), config, tokenizer_sha256, digest)
        finally:
            if early:
                early.close()
            if self._started_here:
                ray.shutdown()
                self._started_here = False

    def _run_on_ray(
        self, units: list[WorkUnit], config: RunConfig, tokenizer_sha256: str, digest: str
    ) -> Iterator[UnitSummary]:
        if not units:
            return
        options: dict = {"num_cpus": self.threads, "max_retries": self.max_retries}
        if not self._started_here:
            # On a cluster, workers get the settings through the task's runtime env (merged
            # with the job's working_dir). A local Ray's workers inherit this process's
            # environment instead: a runtime env would make Ray start a second pool of
            # workers (measured: +3.5 s before the first unit on this 2-core machine).
            env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
            env["RAYON_NUM_THREADS"] = str(self.threads)
            options["runtime_env"] = {"env_vars": env}
        task = ray.remote(process_unit).options(**options)
        pending = [task.remote(u, config, tokenizer_sha256, digest) for u in units]
        while pending:
            ready, pending = ray.wait(pending, num_returns=1)
            try:
                yield ray.get(ready[0])
            except ray.exceptions.RayTaskError as exc:
                # A data or I/O error inside a unit: show the user its one clear line, not
                # a remote traceback (Ray does not retry these: retry_exceptions is off).
                if isinstance(exc.cause, PipelineError | OSError):
                    raise exc.cause from None
                raise
            except ray.exceptions.RayError as exc:  # a worker died max_retries + 1 times, OOM
                raise DataError(
                    f"a work unit: expected it to finish, found its Ray worker lost "
                    f"{self.max_retries + 1} times ({brief(exc)}); look for out-of-memory "
                    "kills (`ray logs`), lower --unit-bytes or add memory, then rerun the "
                    "same command to resume"
                ) from None
