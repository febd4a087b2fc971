"""The cluster path in the world users run it in: token auth on, another Ray on the machine,
stale address files, SIGTERM from `ray job stop`, secrets in the driver's environment, and a
node that cannot see a local --output. Real `ray start` clusters (tests/run/ray_cluster.py)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.run.runner import LocalExecutor, run_pipeline
from pipeline.run.shared_output import HIDE_ENV
from tests.conftest import BERT, REPO, UNIGRAM, make_config
from tests.run.ray_cluster import BIN, Cluster, ray_env, start_head
from tests.run.test_runner import _digest_tree

pytestmark = [pytest.mark.ray, pytest.mark.slow]
UNIT = 400_000  # one dictwiki file -> 3 units
SECRET = "s3cr3t-" + os.urandom(6).hex()


@pytest.fixture(scope="module")
def hidden() -> Iterator[Path]:
    """A folder that the cluster's second node is made blind to (its probe reads fail)."""
    path = Path(tempfile.mkdtemp(prefix="i10-hidden-"))
    yield path
    subprocess.run(["rm", "-rf", str(path)], check=False)


@pytest.fixture(scope="module")
def cluster(hidden: Path) -> Iterator[Cluster]:
    """A head with a secret in its environment (as a head node's env file would hold) and a
    second node. Token auth on: RAY_AUTH_MODE=token, the token in ~/.ray/auth_token."""
    head = start_head(ray_env(AWS_SECRET_ACCESS_KEY=SECRET, AWS_ACCESS_KEY_ID="AKIATEST"))
    try:
        head.add_worker_node(ray_env(**{HIDE_ENV: str(hidden)}), num_cpus=1)
        head.wait_for_nodes(2, ray_env())
        yield head
    finally:
        head.stop()


@pytest.fixture
def stale() -> Iterator[Path]:
    """A Ray temp folder (short: Ray's sockets go there) whose address file names a cluster
    that died (nothing listens on port 1)."""
    folder = Path(tempfile.mkdtemp(prefix="rs-", dir="/tmp"))
    (folder / "ray").mkdir()
    (folder / "ray" / "ray_current_cluster").write_text("127.0.0.1:1\n")
    yield folder
    subprocess.run(["rm", "-rf", str(folder)], check=False)


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, dictwiki_one_file: Path) -> Path:
    out = tmp_path_factory.mktemp("ref") / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=UNIT)
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    return out


def _run_cmd(data: Path, out: Path, *extra: str) -> list[str]:
    return [
        str(BIN / "pipeline"), "run", "--input", str(data), "--tokenizer", str(BERT),
        "--output", str(out), "--unit-bytes", str(UNIT), *extra,
    ]  # fmt: skip


def _client_env(**extra: str) -> dict[str, str]:
    return ray_env(PYTHONPATH=str(REPO), **extra)


@pytest.mark.parametrize("situation", ["live-head", "stale-address-file", "RAY_ADDRESS"])
def test_without_an_address_a_local_ray_whatever_the_machine_holds(
    situation: str,
    cluster: Cluster,
    dictwiki_one_file: Path,
    reference: Path,
    tmp_path: Path,
    stale: Path,
) -> None:
    """Ray would join what it finds (and refuse num_cpus with a traceback): a run must not."""
    if situation == "live-head":  # as on a head node: Ray's default folder names the head
        env = _client_env(RAY_TMPDIR=str(cluster.root))
    elif situation == "stale-address-file":
        env = _client_env(RAY_TMPDIR=str(stale))
    else:
        env = _client_env(RAY_ADDRESS=cluster.address)
    out = tmp_path / "out"
    proc = subprocess.run(
        _run_cmd(dictwiki_one_file, out, "--backend", "ray", "--workers", "2"),
        env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    first = proc.stderr.splitlines()[0]
    assert first.startswith("ray: a local Ray for this run, 2 CPUs"), proc.stderr
    if situation != "stale-address-file":
        assert "is not used: pass --ray-address" in first, "names the cluster it did not use"
    assert "Traceback" not in proc.stderr
    assert "(3 run now)" in proc.stdout
    assert _digest_tree(out) == _digest_tree(reference)


def test_ray_address_auto_refuses_a_stale_record_in_one_line(
    dictwiki_one_file: Path, tmp_path: Path, stale: Path
) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        _run_cmd(dictwiki_one_file, tmp_path / "out", "--ray-address", "auto"),
        env=_client_env(RAY_TMPDIR=str(stale)), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert "ray_current_cluster (127.0.0.1:1) to answer, found nothing listening" in proc.stderr
    assert time.monotonic() - started < 30


def test_a_refused_token_is_one_line_in_seconds(
    cluster: Cluster, dictwiki_one_file: Path, tmp_path: Path
) -> None:
    started = time.monotonic()
    proc = subprocess.run(
        _run_cmd(dictwiki_one_file, tmp_path / "out", "--ray-address", cluster.address),
        env=_client_env(RAY_AUTH_TOKEN="0" * 32), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    seconds = time.monotonic() - started
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert lines[-1].startswith(f"error: --ray-address {cluster.address}: expected a token")
    assert "export RAY_AUTH_MODE=token RAY_AUTH_TOKEN=" in lines[-1]
    assert "InvalidAuthToken" not in proc.stderr and "Traceback" not in proc.stderr
    assert len(lines) <= 2, lines  # the "ray: the cluster at ..." line, then the error
    assert seconds < 15, f"{seconds:.1f} s"


def test_a_node_that_cannot_see_a_local_output_is_named_before_any_work(
    cluster: Cluster, dictwiki_one_file: Path, hidden: Path
) -> None:
    out = hidden / "out"
    proc = subprocess.run(
        _run_cmd(dictwiki_one_file, out, "--ray-address", cluster.address),
        env=_client_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()[-1]
    assert "expected a folder every Ray node can see" in err
    assert re.search(
        r"found 1 of 2 nodes that cannot read a file written there: \S+ \(node \w{8}\);", err
    )
    assert not list(out.glob("train/shard-*")), "refused before any work"
    assert not list(out.glob(".pipeline-probe-*")), "the probe file is removed"


def test_job_submit_with_token_auth_stop_resume_and_no_secrets_in_ray_state(
    cluster: Cluster, dictwiki: Path, tmp_path: Path
) -> None:
    """The README's `ray job submit` with token auth on; `ray job stop` (SIGTERM) leaves one
    line and a resumable output; the head's AWS secret shows in no task or job listing."""
    env = ray_env()  # the README: export RAY_AUTH_MODE=token (the token: ~/.ray/auth_token)
    out = tmp_path / "out"
    submit = [
        str(BIN / "ray"), "job", "submit", "--address", cluster.dashboard, "--working-dir",
        str(REPO), "--no-wait", "--", "python", "jobs/preprocess.py", "--input", str(dictwiki),
        "--tokenizer", str(UNIGRAM), "--output", str(out), "--unit-bytes", str(100_000),
    ]  # fmt: skip
    job = _submit(submit, env)
    _wait(lambda: any(out.glob("validation/shard-*.json")), 600)
    ray = str(BIN / "ray")
    subprocess.run([ray, "job", "stop", "--address", cluster.dashboard, job], env=env,
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    logs = _job_logs(cluster, job, env)
    assert "stopped (SIGTERM): finished work units are kept" in logs, logs[-3000:]
    assert "SIGTERM received" not in logs and "Traceback" not in logs, logs[-3000:]
    assert not (out / "manifest.json").exists()
    done = len(list(out.glob("validation/shard-*.json")))

    again = _submit(submit, env)
    _wait(lambda: _job_status(cluster, again, env) in ("SUCCEEDED", "FAILED", "STOPPED"), 900)
    logs = _job_logs(cluster, again, env)
    assert _job_status(cluster, again, env) == "SUCCEEDED", logs[-3000:]
    assert "\nray: this Ray job's cluster at" in logs, logs[:1000]
    resumed = re.search(r"resuming: (\d+) units already done", logs)
    assert resumed and int(resumed.group(1)) >= done >= 1, logs[:2000]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["splits"]["train"]["num_blocks"] > 9_000
    assert manifest["num_units"] > int(resumed.group(1)), "the job was stopped part-way"

    queries = (
        (["list", "tasks", "--detail", "--limit", "10000"], cluster.address),
        (["job", "list"], cluster.dashboard),
    )
    listings = [_ray_cli(args, address, env) for args, address in queries]
    assert all(p.returncode == 0 for p in listings), [p.stderr[-500:] for p in listings]
    assert "process_unit" in listings[0].stdout, "the listing shows the run's tasks"
    assert "AWS_DEFAULT_REGION" in listings[0].stdout or "env_vars" in listings[0].stdout
    for p in listings:
        assert SECRET not in p.stdout and "AKIATEST" not in p.stdout


def _ray_cli(args: list[str], address: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [str(BIN / "ray"), *args, "--address", address]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def _submit(cmd: list[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    for word in proc.stdout.split():
        if word.strip("'\"").startswith("raysubmit_"):
            return word.strip("'\".")
    raise AssertionError(proc.stdout)


def _job_status(cluster: Cluster, job: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "status", "--address", cluster.dashboard, job],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    text = proc.stdout + proc.stderr  # "Job 'raysubmit_…' succeeded" / "Status for job …: RUNNING"
    found = re.search(r"Job '[^']+' (succeeded|failed|was stopped)|Status for job '[^']+': (\w+)",
                      text)  # fmt: skip
    if not found:
        return text
    word = found.group(1) or found.group(2)
    return {"succeeded": "SUCCEEDED", "failed": "FAILED", "was stopped": "STOPPED"}.get(word, word)


def _job_logs(cluster: Cluster, job: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [str(BIN / "ray"), "job", "logs", "--address", cluster.dashboard, job],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    return proc.stdout


def result_units(stdout: str) -> str:
    found = re.search(r"done: (\d+) units", stdout)
    return found.group(1) if found else "?"


def _wait(ready: object, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if ready():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise TimeoutError("condition not met in time")


@pytest.mark.parametrize("backend", ["processes", "ray"])
def test_sigterm_is_one_line_exit_143_and_resumable(
    backend: str, dictwiki: Path, tmp_path: Path
) -> None:
    """What Kubernetes and batch schedulers send: like Ctrl-C, no stack dump from any process."""
    out = tmp_path / "out"
    cmd = _run_cmd(dictwiki, out, "--backend", backend, "--workers", "2")
    cmd[cmd.index("--unit-bytes") + 1] = str(100_000)
    proc = subprocess.Popen(cmd, env=_client_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    _wait(lambda: any(out.glob("validation/shard-*.json")), 600)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert err.strip().splitlines()[-1].startswith("stopped (SIGTERM)"), err
    assert "Traceback" not in err and "SIGTERM received" not in err and "***" not in err, err
    assert not (out / "manifest.json").exists()
    rerun = subprocess.run(cmd, env=_client_env(), capture_output=True, text=True, timeout=900)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert "resuming: " in rerun.stderr
    assert f"({result_units(rerun.stdout)} run now)" not in rerun.stdout, "resumed, not redone"
    full = make_config(dictwiki, BERT, tmp_path / "ref", unit_bytes=100_000)
    run_pipeline(full, LocalExecutor(), progress_stream=None)
    assert _digest_tree(out) == _digest_tree(tmp_path / "ref")
