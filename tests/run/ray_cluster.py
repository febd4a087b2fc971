"""Real Ray clusters for tests: `ray start` on loopback, free ports, a private temp folder.

Several engineers run tests on one machine at once, so each cluster gets its own ports and its
own `--temp-dir` (short: Ray's Unix sockets live there and must stay under 107 bytes), runs in
its own process group, and is stopped by killing that group only: never `ray stop`, which
stops every Ray on the machine. Token authentication stays as Ray decides it (on when
`~/.ray/auth_token` exists); `RAY_AUTH_MODE=token` is set so that it is on even on a machine
where no Ray has run yet.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ray_env(**extra: str) -> dict[str, str]:
    """This process's environment with token auth on and the venv's `ray` on PATH."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN")}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    env["RAY_AUTH_MODE"] = "token"
    env.update(extra)
    return env


@dataclass
class Cluster:
    """A head (and optional worker nodes) started here; `root` is RAY_TMPDIR for clients."""

    root: Path
    gcs_port: int
    dashboard_port: int
    procs: list[subprocess.Popen] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    @property
    def temp_dir(self) -> Path:
        """The head's --temp-dir: RAY_TMPDIR=root makes it the clients' default Ray folder."""
        return self.root / "ray"

    def add_worker_node(self, env: dict[str, str], num_cpus: int = 1) -> Path:
        """A second node on this machine with its own temp folder; returns that folder."""
        node_tmp = Path(tempfile.mkdtemp(prefix="rw-", dir="/tmp"))
        cmd = [
            str(BIN / "ray"), "start", "--block", f"--address={self.address}",
            "--node-ip-address=127.0.0.1", f"--num-cpus={num_cpus}", "--disable-usage-stats",
            f"--temp-dir={node_tmp}",
            f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
            f"--min-worker-port={free_port()}", "--max-worker-port=0",
        ]  # fmt: skip
        self.procs.append(_spawn(cmd, env))
        self._extra_dirs.append(node_tmp)
        return node_tmp

    def wait_for_nodes(self, count: int, env: dict[str, str], timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            out = subprocess.run(
                [str(BIN / "ray"), "list", "nodes", "--address", self.address, "--format=json"],
                env=env, capture_output=True, text=True, timeout=60,
            )  # fmt: skip
            if out.returncode == 0 and out.stdout.count('"ALIVE"') >= count:
                return
            time.sleep(1)
        raise TimeoutError(f"{count} Ray nodes did not come up at {self.address}")

    def stop(self) -> None:
        for proc in reversed(self.procs):
            stop_group(proc)
        for path in [self.root, *self._extra_dirs]:
            shutil.rmtree(path, ignore_errors=True)

    _extra_dirs: list[Path] = field(default_factory=list)


def start_head(env: dict[str, str], num_cpus: int = 2) -> Cluster:
    root = Path(tempfile.mkdtemp(prefix="rh-", dir="/tmp"))
    cluster = Cluster(root=root, gcs_port=free_port(), dashboard_port=free_port())
    cmd = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
        "--dashboard-host=127.0.0.1", f"--port={cluster.gcs_port}",
        f"--dashboard-port={cluster.dashboard_port}", f"--num-cpus={num_cpus}",
        "--disable-usage-stats", f"--temp-dir={cluster.temp_dir}",
        f"--ray-client-server-port={free_port()}", f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
        f"--metrics-export-port={free_port()}",
    ]  # fmt: skip
    cluster.procs.append(_spawn(cmd, env))
    try:
        _wait_for_dashboard(cluster.dashboard_port, cluster.procs[0])
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _spawn(cmd: list[str], env: dict[str, str]) -> subprocess.Popen:
    # Its own session: stopping it kills this cluster's processes and no other Ray's.
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait_for_dashboard(port: int, proc: subprocess.Popen, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "ray start --head exited early"
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/version", timeout=2):
                return
        except urllib.error.HTTPError:  # 401 with token auth: it answers
            return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"the Ray dashboard on 127.0.0.1:{port} did not answer")


def stop_group(proc: subprocess.Popen) -> None:
    for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            proc.wait(timeout=wait)
        except subprocess.TimeoutExpired:
            continue
        time.sleep(1)  # let the group's other members go too
