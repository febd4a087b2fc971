"""tests/bench/bench_gpu.py, which CI runs with --quick: a void measurement must fail it."""

from __future__ import annotations

import math

import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from tests.bench import bench_gpu


def result(**changes: object) -> dict:
    fine = {"timed_steps": 3, "tokens_per_s_per_gpu": 1000.0,
            "loss_curves": {"bf16": [10.3, 10.2], "fp32": [10.3, 10.2]},
            "peak_gib_per_micro_batch": {"1": math.nan, "2": math.nan}}  # fmt: skip
    return {**fine, **changes}


def test_void_measurements_are_problems() -> None:
    assert bench_gpu.problems(result()) == []
    assert bench_gpu.problems(result(timed_steps=0, tokens_per_s_per_gpu=0.0)) == [
        "no timed step ran (0 steps)"
    ]
    nan = result(loss_curves={"bf16": [math.nan], "fp32": [1.0]})
    assert bench_gpu.problems(nan) == ["bf16: losses missing or not finite: [nan]"]
    oom = result(peak_gib_per_micro_batch={"1": None})
    assert bench_gpu.problems(oom) == [
        "not even a micro-batch of 1 block fits (or none was measured)"
    ]
    assert bench_gpu.problems(result(peak_gib_per_micro_batch={"1": 3.2, "2": None})) == []


def test_the_model_is_deberta_v3_large_from_its_config() -> None:
    config = bench_gpu.DEBERTA_V3_LARGE
    assert (config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]) == (
        1024, 24, 128100,
    )  # fmt: skip
    assert config["position_buckets"] == 256 and not config["position_biased_input"]


def test_without_cuda_the_full_benchmark_skips_cleanly(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(bench_gpu.torch.cuda, "is_available", lambda: False)
    assert bench_gpu.main([]) == 0
    assert "skipped: no CUDA device" in capsys.readouterr().err
