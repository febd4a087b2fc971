"""Fixtures for the trainer tests: the shared dictwiki run (read-only) and a writable copy."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pipeline.format.manifest import load_manifest


@pytest.fixture(scope="session")
def shards(bert_output: Path) -> str:
    """`pipeline run` over all of dictwiki with BERT's tokenizer: ~11.7 K train, ~0.5 K
    validation blocks of 128 (uint16), shared by all tests: never write into it."""
    manifest = load_manifest(str(bert_output))
    assert manifest.splits["train"].num_blocks > 10_000
    assert manifest.splits["validation"].num_blocks > 300
    return str(bert_output)


@pytest.fixture
def shards_copy(shards: str, tmp_path: Path) -> Path:
    """A private copy to damage."""
    return Path(shutil.copytree(shards, tmp_path / "copy"))
