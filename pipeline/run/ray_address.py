"""Which Ray a run uses: a local one started for it, or the cluster the user named.

What a user expects, and what this decides (no Ray import: pure environment and sockets):

- `--backend ray` without `--ray-address`: always a Ray started for this run
  (`ray.init(address="local")`), whatever else runs on the machine. A live `ray start` head,
  `RAY_ADDRESS` in the shell or a stale `ray_current_cluster` file from a cluster that died
  never decide where a run goes nor make it fail; the first progress line says which Ray is
  used and names a cluster found but not used.
- Inside a Ray job (`ray job submit -- pipeline run ...`, or `jobs/preprocess.py`): the job's
  cluster, from the RAY_ADDRESS that the job supervisor sets for the driver; the CLI picks
  the Ray backend there unless told `--backend local` (`in_ray_job`).
- `--ray-address HOST:PORT`: that cluster, checked to answer before Ray is started.
- `--ray-address auto`: RAY_ADDRESS, else the cluster `ray start` recorded on this machine if it
  answers; a stale record is refused in one line instead of Ray's 60 s of retries.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UsageError

JOB_ENV = "RAY_JOB_CONFIG_JSON_ENV_VAR"  # set by Ray's job supervisor for a job's driver only
ADDRESS_FILE = "ray_current_cluster"  # written by `ray start` in Ray's temp folder


@dataclass(frozen=True)
class RayTarget:
    address: str  # for ray.init: "local" or a cluster's GCS address
    description: str  # the run's first progress line
    embedded: bool


def in_ray_job(environ: Mapping[str, str] = os.environ) -> bool:
    """This process is a Ray job's driver (`ray job submit -- pipeline run ...`)."""
    return bool(environ.get("RAY_ADDRESS")) and JOB_ENV in environ


def choose_cluster(
    address: str | None, cpus: int, environ: Mapping[str, str] = os.environ
) -> RayTarget:
    env_address = environ.get("RAY_ADDRESS", "")
    if address in (None, "auto") and in_ray_job(environ):
        return RayTarget(env_address, f"ray: this Ray job's cluster at {env_address}", False)
    if address is None:
        note = ""
        recorded = recorded_address(environ)
        if env_address:
            note = f"; RAY_ADDRESS={env_address} is not used: pass --ray-address to run there"
        elif recorded and answers(recorded):
            note = f"; the cluster at {recorded} is not used: pass --ray-address {recorded}"
        return RayTarget("local", f"ray: a local Ray for this run, {cpus} CPUs{note}", True)
    if address == "auto":
        address = _auto_address(environ)
    if not address.startswith(("ray://", "http://", "https://")) and not answers(address):
        raise UsageError(
            f"--ray-address {address}: expected a Ray cluster answering there, found nothing "
            "listening; check the head's address (`ray start --head` prints it, e.g. "
            "HEAD_IP:6379) or leave --ray-address out to run on a local Ray"
        )
    return RayTarget(address, f"ray: the cluster at {address}", False)


def _auto_address(environ: Mapping[str, str]) -> str:
    if environ.get("RAY_ADDRESS", "") not in ("", "auto"):
        return environ["RAY_ADDRESS"]
    recorded = recorded_address(environ)
    if recorded is None:
        raise UsageError(
            "--ray-address auto: expected a Ray cluster started on this machine (`ray start "
            "--head`) or RAY_ADDRESS, found neither; start one, pass its address, or leave "
            "--ray-address out to run on a local Ray"
        )
    if not answers(recorded):
        raise UsageError(
            f"--ray-address auto: expected the cluster recorded in {address_file(environ)} "
            f"({recorded}) to answer, found nothing listening (a cluster that stopped); start "
            "one, pass its address, or leave --ray-address out to run on a local Ray"
        )
    return recorded


def address_file(environ: Mapping[str, str] = os.environ) -> Path:
    """Where `ray start` records its address: Ray's temp folder, as Ray itself finds it."""
    base = environ.get("RAY_TMPDIR") or environ.get("TMPDIR") or "/tmp"
    return Path(base, "ray", ADDRESS_FILE)


def recorded_address(environ: Mapping[str, str] = os.environ) -> str | None:
    try:
        text = address_file(environ).read_text().strip()
    except OSError:
        return None
    return text or None


def answers(address: str, timeout: float = 3.0) -> bool:
    """Something accepts TCP connections at HOST:PORT (a stopped cluster's port does not)."""
    host, _, port = address.rpartition(":")
    if not port.isdigit():
        return True  # not HOST:PORT: leave it to Ray to interpret
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=timeout):
            return True
    except OSError:
        return False
