"""`pipeline train --masking whole-word|ngram` end to end on the CPU: a tiny model learns, the
rule is stored in the run folder, --resume is exact, a tokenizer without a rule is refused."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.train.loop import main
from tests.train.test_loop import QUICK, records


def train(shards: str | Path, run: Path, *extra: str) -> int:
    return main(["--data", str(shards), "--output", str(run), "--model", "tiny-bert", *QUICK,
                 *extra])  # fmt: skip


@pytest.mark.timeout(300)
@pytest.mark.parametrize("strategy", ["whole-word", "ngram"])
def test_validation_perplexity_falls_with_each_strategy(
    shards: str, tmp_path: Path, strategy: str
) -> None:
    run = tmp_path / strategy
    code = train(shards, run, "--masking", strategy, "--max-steps", "80", "--eval-steps", "0",
                 "--eval-blocks", "64", "--log-steps", "20", "--warmup-ratio", "0.05")  # fmt: skip
    assert code == 0
    evals = records(run, "eval")
    assert [e["step"] for e in evals] == [0, 80]
    first, last = evals[0]["eval_ppl"], evals[-1]["eval_ppl"]
    assert first > 20_000  # a uniform guess over 30,522 ids
    assert last < 0.25 * first, evals
    trains = records(run, "train")
    assert len(trains) == 4 and all(r["masked_tokens_per_s"] > 0 for r in trains)
    record = json.loads((run / "masking.json").read_text())
    assert record["strategy"] == strategy and record["decided"] == "per word"
    assert record["word_rule"]["rule"] == "wordpiece" and record["word_rule"]["marker"] == "##"
    assert ("max_ngram" in record) == (strategy == "ngram")


@pytest.mark.timeout(300)
def test_resume_with_ngram_masking_repeats_the_uninterrupted_losses(
    shards: str, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    args = ["--masking", "ngram", "--max-ngram", "4", "--max-steps", "6", "--save-steps", "3"]
    args += ["--log-steps", "1", "--eval-steps", "0"]
    assert train(shards, whole, *args) == 0
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000006")
    assert train(shards, cut, *args, "--resume", "--workers", "2") == 0
    losses = [r["loss"] for r in records(whole, "train")]
    assert len(losses) == 6 and [r["loss"] for r in records(cut, "train")] == losses
    assert records(cut, "eval")[-1]["eval_loss"] == records(whole, "eval")[-1]["eval_loss"]


def test_a_tokenizer_without_a_word_rule_is_refused_before_anything_is_written(
    shards_copy: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    word_level = {"model": {"type": "WordLevel", "vocab": {"[MASK]": 0}, "unk_token": "[MASK]"},
                  "pre_tokenizer": {"type": "Whitespace"}, "added_tokens": []}  # fmt: skip
    (shards_copy / "tokenizer.json").write_text(json.dumps(word_level))
    run = tmp_path / "run"
    assert train(shards_copy, run, "--masking", "whole-word", "--max-steps", "1") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert "found model type WordLevel with pre-tokenizer Whitespace; use --masking token" in err
    assert not run.exists()
    assert train(shards_copy, run, "--masking", "span") == 2
    assert "--masking: expected one of ('token', 'whole-word', 'ngram'), found span" in (
        capsys.readouterr().err
    )
    assert train(shards_copy, run, "--masking", "ngram", "--max-ngram", "0") == 2
    assert "--max-ngram: expected 1 to 10 words, found 0" in capsys.readouterr().err
