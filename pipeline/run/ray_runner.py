"""The only module that imports Ray: runs `process.process_unit` as Ray tasks.

Each task reserves `threads_per_worker` CPUs and its tokenizer runs on exactly that many Rayon
threads (RAYON_NUM_THREADS), so tasks never over-subscribe the cores: measured here, single-
thread tokenizers in N processes beat one process with N Rayon threads by ~15 %. Tasks are
retried when a worker process dies; a unit writes its shards atomically, so a retry redoes it
from the start. The driver only receives small summaries, never documents or tokens.

Which Ray: `ray_address.choose_cluster` (a local Ray for this run unless an address is given
or this is a Ray job). Before a cluster is joined, its token is checked in half a second
(Ray itself retries ~20 s on a wrong token), and a local `--output` is checked to be visible
on every node (`shared_output`). Tasks get only non-secret settings in their runtime env:
credentials stay where they are unless the user opts in (`forward_credentials`).
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import sys
from collections.abc import Iterator
from functools import partial
from typing import TextIO

import ray

from pipeline.errors import DataError, PipelineError, Terminated, UsageError, brief
from pipeline.format import storage
from pipeline.format.storage import ENDPOINT_ENV
from pipeline.ingest.units import WorkUnit
from pipeline.run.config import RunConfig
from pipeline.run.encoders import WORD_CACHE_ENV
from pipeline.run.faults import FAULT_MARKER_ENV, FAULT_PAUSE_ENV, FAULT_UNIT_ENV
from pipeline.run.process import process_unit
from pipeline.run.ray_address import RayTarget, choose_cluster
from pipeline.run.shared_output import check_shared_output, read_probe
from pipeline.run.startup_worker import StartupWorker
from pipeline.run.summary import UnitSummary

# Settings a cluster's tasks get in their runtime env, which anyone who can list tasks or
# jobs can read: nothing secret. Workers find credentials as the AWS SDK does on their node
# (its environment, ~/.aws, an instance or pod role).
PASSED_ENV = (
    FAULT_UNIT_ENV,
    FAULT_PAUSE_ENV,
    FAULT_MARKER_ENV,
    ENDPOINT_ENV,
    WORD_CACHE_ENV,
    "AWS_DEFAULT_REGION",
    "AWS_REGION",
    "AWS_ENDPOINT_URL",
)
# Forwarded only with --forward-credentials: then visible in `ray list tasks --detail`.
CREDENTIAL_ENV = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


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
        forward_credentials: bool = False,
        log: TextIO | None = sys.stderr,
    ) -> None:
        self.workers = workers
        self.address = address
        self.threads = threads_per_worker
        self.max_retries = max_retries
        self.work_while_starting = work_while_starting
        self.forward_credentials = forward_credentials
        self.log = log
        self._started_here = False

    def _target(self) -> RayTarget:
        return choose_cluster(self.address, (self.workers or os.cpu_count() or 1) * self.threads)

    def _connect(self, target: RayTarget) -> None:
        if ray.is_initialized():
            return
        if self.log:
            print(target.description, file=self.log, flush=True)
        # ray.init installs its own SIGTERM handler (sys.exit(15), no cleanup message): keep
        # the driver's (the CLI turns SIGTERM into the Ctrl-C path: one line, exit 143).
        handlers = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
        # Ray's notice that token auth is on, on every run: the first line says what is used.
        logging.getLogger("ray._private.authentication").setLevel(logging.ERROR)
        try:
            self._init(target)
        except SystemExit as exc:  # Ray's own handler, while ray.init ran: sys.exit(SIGTERM)
            if exc.code != signal.SIGTERM:
                raise
            with contextlib.suppress(Exception):
                ray.shutdown()  # whatever of a local Ray had started
            raise Terminated from None
        finally:
            for sig, handler in handlers.items():
                if handler is not None:
                    signal.signal(sig, handler)

    def _init(self, target: RayTarget) -> None:
        if not target.embedded:
            check_token(target.address)
            ray.init(address=target.address, log_to_driver=True)
        else:
            os.environ["RAYON_NUM_THREADS"] = str(self.threads)  # inherited by local workers
            # Not RAY_AUTH_MODE=token here: Ray caches the mode at import, and a changed
            # variable gives its GCS and this driver different modes (GCS fails to start).
            ray.init(
                # "local": never a cluster found through RAY_ADDRESS or an address file.
                address="local",
                num_cpus=(self.workers or os.cpu_count() or 1) * self.threads,
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
        target = self._target()
        remote = storage.is_remote(config.output) or any(map(storage.is_remote, config.inputs))
        # Not with object storage: forking after the AWS SDK has started threads is unsafe.
        if self.work_while_starting and target.embedded and not ray.is_initialized() and not remote:
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
            self._connect(target)
            if not self._started_here and not storage.is_remote(config.output):
                check_shared_output(
                    config.output, partial(_read_on_every_node, threads=self.threads)
                )
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
            passed = PASSED_ENV + (CREDENTIAL_ENV if self.forward_credentials else ())
            env = {k: os.environ[k] for k in passed if k in os.environ}
            env["RAYON_NUM_THREADS"] = str(self.threads)
            options["runtime_env"] = {"env_vars": env}
        task = ray.remote(process_unit).options(**options)
        # A bounded window of tasks in flight, topped up as each finishes. Submitting all at
        # once kept every task's spec in the driver and made each ray.wait scan them all:
        # at 10^4 units, 6.1 ms of driver CPU per unit and +140 MiB (README, "At scale").
        todo = iter(units)
        pending: list = []
        for done in itertools.count():
            if done % 64 == 0:
                window = self._window()
            pending += [
                task.remote(u, config, tokenizer_sha256, digest)
                for u in itertools.islice(todo, max(0, window - len(pending)))
            ]
            if not pending:
                return
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

    def _window(self) -> int:
        """Tasks to keep in flight: twice what the cluster can run at once (it may grow)."""
        slots = int(ray.cluster_resources().get("CPU", 1)) // max(self.threads, 1)
        return max(4, 2 * slots)


def check_token(address: str) -> None:
    """One clear line when the cluster refuses this machine's token (or its lack of one).

    Asked of the cluster's GCS directly, with Ray's C++ warnings kept off the terminal: half
    a second, where ray.init logs `InvalidAuthToken` for ~20 s and then fails vaguely.
    """
    if address.startswith(("ray://", "http://", "https://")):
        return
    try:
        from ray._private.authentication.authentication_token_setup import (
            maybe_enable_token_auth_if_token_available,
        )
        from ray._raylet import GcsClient
    except ImportError:  # another Ray version: ray.init reports it, slowly
        return
    # As `ray start` does: with RAY_AUTH_MODE unset, a token on this machine turns auth on.
    with contextlib.suppress(Exception):  # a private helper: its signature may change
        maybe_enable_token_auth_if_token_available(warn_if_disabled=False)
    try:
        with _stderr_silenced():
            GcsClient(address=address).internal_kv_get(b"session_name", b"session", timeout=15)
    except ray.exceptions.AuthenticationError:
        mode = os.environ.get("RAY_AUTH_MODE", "unset")
        source = (
            "RAY_AUTH_TOKEN"
            if os.environ.get("RAY_AUTH_TOKEN")
            else os.environ.get("RAY_AUTH_TOKEN_PATH", "~/.ray/auth_token")
        )
        if source.startswith("~") and not os.path.exists(os.path.expanduser(source)):
            source = "none on this machine"
        raise UsageError(
            f"--ray-address {address}: expected a token the cluster accepts, found it refused "
            f"(RAY_AUTH_MODE={mode}, token from {source}); run `ray get-auth-token` on the "
            "head and export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=<that token>, then rerun"
        ) from None
    except Exception:  # anything else: ray.init gives Ray's own error
        return


@contextlib.contextmanager
def _stderr_silenced() -> Iterator[None]:
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)


def _read_on_every_node(path: str, threads: int) -> dict[str, str | None]:
    """`read_probe(path)` on each alive node that can run a unit: node -> what it read."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    refs = {}
    for node in ray.nodes():
        if not node.get("Alive") or node.get("Resources", {}).get("CPU", 0) < threads:
            continue
        strategy = NodeAffinitySchedulingStrategy(node["NodeID"], soft=False)
        task = ray.remote(read_probe).options(num_cpus=0, scheduling_strategy=strategy)
        refs[f"{node['NodeManagerAddress']} (node {node['NodeID'][:8]})"] = task.remote(path)
    ready = set(ray.wait(list(refs.values()), num_returns=len(refs), timeout=120)[0])
    found: dict[str, str | None] = {}
    for name, ref in refs.items():
        try:
            found[name] = ray.get(ref) if ref in ready else None
        except ray.exceptions.RayError:
            found[name] = None
    return found
