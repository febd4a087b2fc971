"""tests/bench/bench_datapath.py, which CI runs with --quick: it must fail loudly, not pass."""

from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.train.masking import MLMCollator
from tests.bench import bench_datapath


class MasksNothing(MLMCollator):
    """The defect the benchmark must catch: a data path whose batches carry no masked token."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, Any]:
        batch = super().__call__(*args, **kwargs)
        batch["labels"].fill_(-100)
        return batch


def test_a_data_path_without_masked_tokens_fails_the_benchmark(
    shards: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(bench_datapath, "MLMCollator", MasksNothing)
    assert bench_datapath.main(["--data", shards, "--quick"]) == 1
    out, err = capsys.readouterr()
    width = bench_datapath.NAME_WIDTH
    rows = {line[:width].strip(): line[width:].split() for line in out.splitlines()[1:]}
    assert out.startswith("contestant"), out
    ours = {"pipeline", "whole-word", "ngram"} | {
        f"collator {m}" for m in ("token", "whole-word", "ngram")
    }
    assert set(rows) == ours | {"HF collator", "HF recipe"}, out
    for name in ours:
        assert rows[name][0] == "4" and rows[name][2] == "0", "measured, and shown"
        assert f"FAILED: {name}: produced no masked tokens in 4 batches" in err
    assert "HF collator" not in err and "HF recipe" not in err, "they still mask"


def test_short_or_empty_measurements_are_problems() -> None:
    fine = {"batches": 4, "seconds": 0.1, "masked_tokens": 5, "masked_tokens_per_s": 50.0}
    assert bench_datapath.problems({"a": fine}, 4) == []
    assert bench_datapath.problems({}, 4) == ["no contestant ran"]
    short = {**fine, "batches": 0, "masked_tokens": 0, "masked_tokens_per_s": 0.0}
    assert bench_datapath.problems({"a": fine, "b": short}, 4) == [
        "b: produced no masked tokens in 0 batches",
        "b: produced 0 batches, expected 4",
    ]
    assert "-" in bench_datapath.table({"b": short}).splitlines()[1], "no division by zero"
