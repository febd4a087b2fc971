"""`pipeline run` re-executes itself once on mimalloc; LD_PRELOAD is put back as it was, the
opt-out works, a bad choice is one line, and the shards are the same bytes as glibc's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.run.allocator import ALLOCATOR_ENV, mimalloc_library
from tests.conftest import REPO, UNIGRAM

PROBE = (
    "import os, sys\n"
    "from pipeline.run.allocator import preload_mimalloc\n"
    "preload_mimalloc()\n"
    "maps = open('/proc/self/maps').read()\n"
    "print('libmimalloc' in maps, os.environ.get('LD_PRELOAD', ''), os.getpid())\n"
)


def _probe(**env: str) -> list[str]:
    full = {**os.environ, "PYTHONPATH": str(REPO), **env}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         env=full, check=True)  # fmt: skip
    return out.stdout.split(" ")


@pytest.fixture
def plain_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ALLOCATOR_ENV, raising=False)
    monkeypatch.delenv("LD_PRELOAD", raising=False)


def test_mimalloc_is_installed() -> None:
    library = mimalloc_library()
    assert library is not None and Path(library).is_file()


def test_the_process_runs_on_mimalloc_and_ld_preload_is_restored(plain_env: None) -> None:
    loaded, preload, _ = _probe()
    assert loaded == "True"  # mapped in this process, so in the workers it forks
    assert preload == ""  # a local Ray or a subprocess it starts does not inherit it


def test_system_keeps_glibc(plain_env: None) -> None:
    assert _probe(**{ALLOCATOR_ENV: "system"})[0] == "False"


def test_a_bad_choice_is_one_line(plain_env: None) -> None:
    full = {**os.environ, "PYTHONPATH": str(REPO), ALLOCATOR_ENV: "tcmalloc"}
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=full)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"error: {ALLOCATOR_ENV}: expected mimalloc or system, found 'tcmalloc'; unset it for "
        "mimalloc (the default where it is installed)"
    )


def test_shards_are_the_same_bytes_on_either_allocator(
    plain_env: None, tmp_path: Path, dictwiki_one_file: Path
) -> None:
    digests = {}
    for choice in ("mimalloc", "system"):
        out = tmp_path / choice
        cmd = [sys.executable, "-m", "pipeline.commands.cli", "run", "--quiet", "--workers", "2",
               "--input", str(dictwiki_one_file), "--tokenizer", str(UNIGRAM), "--output",
               str(out)]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(REPO), ALLOCATOR_ENV: choice}
        subprocess.run(cmd, cwd=REPO, env=env, check=True, capture_output=True)
        shards = sorted(out.glob("*/shard-*.arrow"))
        assert shards and sum(p.stat().st_size for p in shards) > 100_000
        digests[choice] = [p.read_bytes() for p in shards]
    assert digests["mimalloc"] == digests["system"]
