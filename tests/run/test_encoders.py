"""A worker's encoder: its word cache comes from --tokenizer-cache (an environment variable
that forked workers inherit and Ray tasks are passed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.commands import cli
from pipeline.errors import UsageError
from pipeline.run.encoders import WORD_CACHE_ENV, word_cache_words
from pipeline.run.ray_runner import PASSED_ENV
from tests.conftest import UNIGRAM


def test_the_default_and_a_set_word_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORD_CACHE_ENV, raising=False)
    assert word_cache_words() == 1_000_000
    monkeypatch.setenv(WORD_CACHE_ENV, "0")
    assert word_cache_words() == 0
    assert WORD_CACHE_ENV in PASSED_ENV  # a cluster's tasks see it too


@pytest.mark.parametrize("value", ["lots", "-5", "1e6", ""])
def test_a_bad_word_cache_variable_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(WORD_CACHE_ENV, value)
    with pytest.raises(UsageError, match=f"{WORD_CACHE_ENV}: expected a number of words"):
        word_cache_words()


def test_the_flag_reaches_the_workers_and_the_run_does_real_work(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dictwiki_one_file: Path
) -> None:
    monkeypatch.delenv(WORD_CACHE_ENV, raising=False)
    out = tmp_path / "out"
    flags = f"--input {dictwiki_one_file} --tokenizer {UNIGRAM} --output {out}".split()
    assert (
        cli.main(["run", "--backend", "local", "--quiet", *flags, "--tokenizer-cache", "12345"])
        == 0
    )
    assert word_cache_words() == 12_345
    assert any(p.stat().st_size > 0 for p in out.glob("train/shard-*.arrow"))
