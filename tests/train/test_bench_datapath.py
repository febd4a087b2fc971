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
    rows = {line.split()[0]: line.split() for line in out.splitlines()[1:]}
    assert out.startswith("contestant") and set(rows) == {"pipeline", "HF"}, out
    assert rows["pipeline"][1:2] == ["4"] and rows["pipeline"][3] == "0", "measured, and shown"
    assert "FAILED: pipeline: produced no masked tokens in 4 batches" in err
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
