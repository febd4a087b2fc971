"""Which Ray a run uses, decided from the environment alone (pure: no Ray started here)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pipeline.errors import UsageError
from pipeline.run.ray_address import JOB_ENV, choose_cluster, in_ray_job


@pytest.fixture
def listening() -> Iterator[str]:
    """An address where something accepts connections, as a live head's GCS port does."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    yield f"127.0.0.1:{server.getsockname()[1]}"
    server.close()


def _recorded(tmp_path: Path, address: str) -> dict[str, str]:
    (tmp_path / "ray").mkdir()
    (tmp_path / "ray" / "ray_current_cluster").write_text(address + "\n")
    return {"RAY_TMPDIR": str(tmp_path)}


def test_without_an_address_always_a_local_ray(tmp_path: Path, listening: str) -> None:
    plain = choose_cluster(None, 4, {"RAY_TMPDIR": str(tmp_path)})
    assert plain.embedded and plain.address == "local"
    assert plain.description == "ray: a local Ray for this run, 4 CPUs"
    live = choose_cluster(None, 2, _recorded(tmp_path, listening))
    assert live.embedded and f"the cluster at {listening} is not used" in live.description
    env = choose_cluster(None, 2, {"RAY_ADDRESS": listening})
    assert env.embedded and f"RAY_ADDRESS={listening} is not used" in env.description


def test_a_stale_address_file_never_matters_without_an_address(tmp_path: Path) -> None:
    target = choose_cluster(None, 2, _recorded(tmp_path, "127.0.0.1:1"))
    assert target.embedded and target.description == "ray: a local Ray for this run, 2 CPUs"


def test_inside_a_ray_job_the_jobs_cluster(listening: str) -> None:
    environ = {"RAY_ADDRESS": listening, JOB_ENV: "{}"}
    assert in_ray_job(environ) and not in_ray_job({"RAY_ADDRESS": listening})
    for address in (None, "auto"):
        target = choose_cluster(address, 2, environ)
        assert not target.embedded and target.address == listening
        assert target.description == f"ray: this Ray job's cluster at {listening}"


def test_ray_address_auto_and_explicit(tmp_path: Path, listening: str) -> None:
    assert choose_cluster("auto", 2, _recorded(tmp_path, listening)).address == listening
    assert choose_cluster(listening, 2, {}).address == listening
    assert choose_cluster("ray://head:10001", 2, {}).address == "ray://head:10001"
    with pytest.raises(UsageError, match=r"--ray-address auto: expected a Ray cluster started"):
        choose_cluster("auto", 2, {"RAY_TMPDIR": str(tmp_path / "none")})
    with pytest.raises(UsageError, match=r"--ray-address 127.0.0.1:1: expected a Ray cluster"):
        choose_cluster("127.0.0.1:1", 2, {})


def test_ray_address_auto_refuses_a_stale_record(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"\(127.0.0.1:1\) to answer, found nothing listening"):
        choose_cluster("auto", 2, _recorded(tmp_path, "127.0.0.1:1"))
