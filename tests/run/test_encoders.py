"""A worker's encoder: its word cache comes from --tokenizer-cache (an environment variable
that forked workers inherit and Ray tasks are passed, set for one run and restored after)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipeline.commands import cli
from pipeline.errors import UsageError
from pipeline.run import encoders
from pipeline.run.encoders import WORD_CACHE_ENV, word_cache_for_run, word_cache_words
from pipeline.run.ray_runner import PASSED_ENV
from tests.conftest import UNIGRAM


def test_the_default_and_a_set_word_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WORD_CACHE_ENV, raising=False)
    assert word_cache_words() == 1_000_000
    monkeypatch.setenv(WORD_CACHE_ENV, "0")
    assert word_cache_words() == 0
    assert WORD_CACHE_ENV in PASSED_ENV  # a cluster's tasks see it too


@pytest.mark.parametrize("value", ["lots", "-5", "1e6", "", "²", "100000001"])
def test_a_bad_word_cache_variable_is_named(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(WORD_CACHE_ENV, value)
    with pytest.raises(UsageError, match=f"{WORD_CACHE_ENV}: expected a number of words"):
        word_cache_words()
    with pytest.raises(UsageError, match=f"{WORD_CACHE_ENV}: expected"), word_cache_for_run(None):
        pass  # a bad inherited value fails before the run starts


@pytest.mark.parametrize("words", [-1, 2**64])
def test_a_bad_flag_value_is_refused(words: int) -> None:
    refused = pytest.raises(UsageError, match=f"--tokenizer-cache: expected 0 to .* found {words}")
    with refused, word_cache_for_run(words):
        pass


def test_the_flag_reaches_the_run_and_is_restored_after(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dictwiki_one_file: Path
) -> None:
    monkeypatch.setenv(WORD_CACHE_ENV, "7")  # as a user's shell might have it
    seen: list[str | None] = []
    real = encoders.DocumentEncoder

    def spy(*args: object, **kwargs: object) -> object:
        seen.append(os.environ.get(WORD_CACHE_ENV))
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(encoders, "DocumentEncoder", spy)
    out = tmp_path / "out"
    flags = f"--input {dictwiki_one_file} --tokenizer {UNIGRAM} --output {out}".split()
    assert (
        cli.main(["run", "--backend", "local", "--quiet", *flags, "--tokenizer-cache", "12345"])
        == 0
    )
    assert seen == ["12345"]  # the encoder was built under the flag's value
    assert os.environ[WORD_CACHE_ENV] == "7"  # and the environment is as it was
    assert any(p.stat().st_size > 0 for p in out.glob("train/shard-*.arrow"))
