"""One optimizer step: micro-batches that give the same update, found on a (simulated) CUDA OOM."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.errors import PipelineError  # noqa: E402
from pipeline.train.models import (  # noqa: E402
    PRESETS,
    MaskedLMObjective,
    enable_gradient_checkpointing,
    load_model,
    masked_targets,
)
from pipeline.train.runtime import Runtime, choose_precision  # noqa: E402
from pipeline.train.step import TrainStep, smaller_micro_batch, split_batch  # noqa: E402
from tests.train.test_models import TOKENIZER  # noqa: E402  (one tiny vocabulary)

CPU = Runtime(rank=0, world_size=1, device=torch.device("cpu"))


def tiny(tmp_path: Path, dropout: float = 0.0, preset: str = "tiny-bert") -> Any:
    config = dict(PRESETS[preset], hidden_dropout_prob=dropout)
    config["attention_probs_dropout_prob"] = dropout
    path = tmp_path / f"{preset}-{dropout}.json"
    path.write_text(json.dumps(config))
    torch.manual_seed(0)
    return load_model(str(path), TOKENIZER, 128)


def batch(n: int, seed: int = 1, length: int = 32) -> dict[str, Any]:
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 300, (n, length), generator=g)
    chosen = torch.rand(ids.shape, generator=g) < 0.15
    labels = torch.where(chosen, ids, torch.full_like(ids, -100))
    return {"input_ids": torch.where(chosen, torch.full_like(ids, 4), ids), "labels": labels}


def stepper(model: Any, micro: int, batch_size: int, automatic: bool = False) -> TrainStep:
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # the update is the gradient
    return TrainStep(
        runner=MaskedLMObjective(model), model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0), rt=CPU,
        batch_size=batch_size, micro_batch_size=micro, automatic=automatic, max_grad_norm=0.0,
    )  # fmt: skip


def parameters(model: Any) -> list[Any]:
    return [p.detach().clone() for p in model.parameters()]


def test_smaller_micro_batches_divide_the_batch() -> None:
    assert smaller_micro_batch(512, 512) == 256 and smaller_micro_batch(512, 2) == 1
    assert [smaller_micro_batch(12, m) for m in (12, 6, 3, 1)] == [6, 3, 1, None]
    assert smaller_micro_batch(10, 10) == 5 and smaller_micro_batch(10, 5) == 2
    parts = split_batch(batch(16), 4)
    assert len(parts) == 4 and all(p["input_ids"].shape == (4, 32) for p in parts)
    assert torch.equal(torch.cat([p["labels"] for p in parts]), batch(16)["labels"])


@pytest.mark.parametrize("cut", [(16, 16), (16, 4), (8, 8), (8, 2)])
def test_one_by_16_and_4_by_4_give_the_same_update(tmp_path: Path, cut: tuple[int, int]) -> None:
    """1 x 16 (the whole batch at once) against the same 16 blocks in micro-batches, or as two
    accumulated batches of 8: the optimizer sees the same gradient (to float rounding)."""
    per_device, micro = cut
    whole = tiny(tmp_path)
    reference = stepper(whole, 16, 16)([batch(16)])
    split = tiny(tmp_path)
    data = batch(16)
    batches = [
        {k: v[i : i + per_device] for k, v in data.items()} for i in range(0, 16, per_device)
    ]
    result = stepper(split, micro, per_device)(batches)
    assert int(result.masked) == int(reference.masked) == int((data["labels"] != -100).sum()) > 0
    assert float(result.loss_sum) == pytest.approx(float(reference.loss_sum), rel=1e-5)
    assert float(result.grad_norm) == pytest.approx(float(reference.grad_norm), rel=1e-5)
    start = parameters(tiny(tmp_path))
    moved = [(a - b).abs().max() for a, b in zip(parameters(whole), start, strict=True)]
    assert max(moved) > 1e-3, "the step changed the weights"
    for a, b in zip(parameters(whole), parameters(split), strict=True):
        assert torch.allclose(a, b, rtol=1e-5, atol=1e-6)


class OutOfMemoryAbove:
    """A forward that raises CUDA's out-of-memory error above `limit` blocks, as a GPU would."""

    def __init__(self, objective: MaskedLMObjective, limit: int) -> None:
        self.forward, self.limit, self.sizes = objective.forward, limit, []
        self.failures = 0

    def __call__(self, input_ids: Any, *args: Any, **kwargs: Any) -> Any:
        self.sizes.append(int(input_ids.shape[0]))
        if input_ids.shape[0] > self.limit:
            self.failures += 1
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.forward(input_ids, *args, **kwargs)


def test_a_cuda_oom_halves_the_micro_batch_until_it_fits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tiny(tmp_path, dropout=0.1)  # the probe's dropout draws must leave no trace
    run = stepper(model, 16, 16, automatic=True)
    run.runner.forward = oom = OutOfMemoryAbove(run.runner, limit=4)
    torch.manual_seed(5)
    result = run([batch(16)])
    assert run.micro_batch_size == 4 and oom.failures == 2
    probe, step = [16, 8, 4, 4, 4, 4], [4, 4, 4, 4]
    assert oom.sizes == [*probe, *step], "the probe at 16, 8 and 4, then the step at 4"
    err = capsys.readouterr().err
    assert err.count("micro-batch:") == 1, err
    assert "micro-batch: 4 blocks per forward pass, 4 per per-device batch of 16" in err
    assert "out of memory at 16, 8" in err and "expandable_segments:True" in err
    assert all(p.grad is None for p in model.parameters()), "gradients cleared after the step"
    # The same update as a run told the size, from the same RNG state: the probe left nothing.
    told = tiny(tmp_path, dropout=0.1)
    torch.manual_seed(5)
    expected = stepper(told, 4, 16)([batch(16)])
    assert float(result.loss_sum) == float(expected.loss_sum)
    for a, b in zip(parameters(model), parameters(told), strict=True):
        assert torch.equal(a, b)
    run([batch(16, seed=2)])  # found once: no more probing
    assert oom.sizes[10:] == [4, 4, 4, 4] and capsys.readouterr().err == ""


def test_a_later_oom_retries_the_step_smaller_and_one_block_is_the_floor(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = stepper(tiny(tmp_path), 8, 8)  # told 8: no probe
    run.runner.forward = oom = OutOfMemoryAbove(run.runner, limit=2)
    run([batch(8)])
    assert run.micro_batch_size == 2 and oom.failures == 2
    assert "micro-batch: 2 blocks" in capsys.readouterr().err
    oom.limit = 0
    with pytest.raises(PipelineError, match="found CUDA out of memory with a micro-batch of 1"):
        run([batch(8)])


def test_the_head_gathers_host_computed_positions_like_the_boolean_index(
    tmp_path: Path,
) -> None:
    model = tiny(tmp_path, preset="tiny-deberta-v2").eval()
    objective = MaskedLMObjective(model)
    data = batch(3)
    targets = masked_targets(data["labels"], multiple=64)
    count = int((data["labels"] != -100).sum())
    assert targets["masked_positions"].numel() == 64 > count
    assert int((targets["masked_labels"] != -100).sum()) == count
    with torch.no_grad():
        gathered = objective(**data, **targets)
        indexed = objective(**data)
    assert int(gathered[1]) == int(indexed[1]) == count
    assert torch.allclose(gathered[0], indexed[0], rtol=1e-5)


@pytest.mark.timeout(300)
def test_compile_sees_one_graph_without_host_syncs(tmp_path: Path) -> None:
    """Boolean indexing on the device is data-dependent: dynamo breaks the graph there (and
    a GPU waits for the host). With host-computed positions the forward is one graph."""
    model = tiny(tmp_path).eval()
    objective = MaskedLMObjective(model)
    data = batch(2, length=16)
    explain = torch._dynamo.explain(objective)
    assert explain(**data, **masked_targets(data["labels"])).graph_break_count == 0
    torch._dynamo.reset()


def checkpoints_activations(model: Any) -> bool:
    """transformers 5.x names it is_activation_checkpointing, 4.x is_gradient_checkpointing."""
    if hasattr(type(model), "is_activation_checkpointing"):
        return bool(model.is_activation_checkpointing)
    return bool(getattr(model, "is_gradient_checkpointing", False))


def test_gradient_checkpointing_gives_the_same_gradient(tmp_path: Path) -> None:
    plain, checkpointed = tiny(tmp_path), tiny(tmp_path)
    enable_gradient_checkpointing(checkpointed, "tiny-bert")
    assert checkpoints_activations(checkpointed) and not checkpoints_activations(plain)
    for model in (plain, checkpointed):
        loss, count = MaskedLMObjective(model.train())(**batch(4))
        (loss / count).backward()
    for a, b in zip(plain.parameters(), checkpointed.parameters(), strict=True):
        assert torch.allclose(a.grad, b.grad, rtol=1e-4, atol=1e-6)


def test_precision_auto_falls_back_where_the_gpu_has_no_bf16() -> None:
    assert choose_precision("auto", cuda=True, bf16_supported=True) == (torch.bfloat16, None)
    dtype, note = choose_precision("auto", cuda=True, bf16_supported=False)
    assert dtype == torch.float16 and "no native bf16" in note and "GradScaler" in note
    assert note.count("\n") == 0
    assert choose_precision("auto", cuda=False, bf16_supported=False) == (None, None)
    assert choose_precision("fp32", cuda=True, bf16_supported=True) == (None, None)
    assert choose_precision("fp16", cuda=False, bf16_supported=False)[0] == torch.float16


def test_fp16_steps_through_a_grad_scaler(tmp_path: Path) -> None:
    from pipeline.train.step import grad_scaler

    rt = Runtime(rank=0, world_size=1, device=torch.device("cpu"), amp_dtype=torch.float16)
    scaler = grad_scaler(rt, None)
    assert scaler is not None and grad_scaler(CPU, None) is None
    model = tiny(tmp_path)
    before = parameters(model)
    run = stepper(model, 4, 8)
    run.rt, run.scaler = rt, scaler
    result = run([batch(8)])
    assert torch.isfinite(result.grad_norm)
    assert any(not torch.equal(a, b) for a, b in zip(before, parameters(model), strict=True))
    restored = grad_scaler(rt, copy.deepcopy(scaler.state_dict()))
    assert restored.state_dict() == scaler.state_dict()


def fp16_stepper(model: Any, micro: int, batch_size: int) -> TrainStep:
    from pipeline.train.step import grad_scaler

    rt = Runtime(rank=0, world_size=1, device=torch.device("cpu"), amp_dtype=torch.float16)
    run = stepper(model, micro, batch_size)
    run.rt, run.scaler = rt, grad_scaler(rt, None)
    return run


def test_fp16_retries_an_oom_in_the_backward_pass_smaller(tmp_path: Path) -> None:
    run = fp16_stepper(tiny(tmp_path), 8, 8)
    run.runner.forward = oom = OutOfMemoryAbove(run.runner, limit=4)
    result = run([batch(8)])
    assert run.micro_batch_size == 4 and oom.failures == 1 and torch.isfinite(result.grad_norm)


@pytest.mark.parametrize("where", ["clip", "optimizer"])
def test_an_oom_after_the_backward_pass_is_not_retried(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    """Gradient clipping or optimizer.step() out of memory under fp16: a retry would unscale the
    gradients twice (GradScaler raises) or apply a partly done update again."""
    model = tiny(tmp_path)
    run = fp16_stepper(model, 4, 8)
    run.runner.forward = calls = OutOfMemoryAbove(run.runner, limit=8)
    first = next(model.parameters())
    before = first.detach().clone()
    oom = torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1.00 GiB")
    if where == "clip":

        def clip(*args: Any, **kwargs: Any) -> Any:
            raise oom

        monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", clip)
    else:

        def partway(*args: Any, **kwargs: Any) -> Any:
            with torch.no_grad():
                first.add_(1.0)  # the first parameter updated, then out of memory
            raise oom

        monkeypatch.setattr(run.optimizer, "step", partway)
    with pytest.raises(PipelineError, match=r"optimizer step: expected .* found a CUDA out-of-"
                       r"memory there .* rerun with --resume") as caught:  # fmt: skip
        run([batch(8)])
    assert "\n" not in str(caught.value) and "Tried to allocate 1.00 GiB" in str(caught.value)
    assert calls.sizes == [4, 4], "one forward pass per micro-batch: no retry"
    assert run.micro_batch_size == 4
    expected = before + 1.0 if where == "optimizer" else before
    assert torch.equal(first.detach(), expected), "no part of the update applied twice"
    assert all(p.grad is None for p in model.parameters()), "gradients dropped"


@pytest.mark.parametrize("old_torch", [False, True])
def test_precision_auto_uses_fp16_on_a_gpu_that_only_emulates_bf16(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], old_torch: bool
) -> None:
    """A V100 or T4 (compute capability 7.x): torch >= 2.3 says bf16 is supported there unless
    asked for native support only; torch before it has no such argument."""
    from pipeline.train import runtime

    def emulating(including_emulation: bool = True) -> bool:
        return including_emulation  # what torch 2.13 answers on compute capability 7.x

    def older(*args: Any) -> bool:
        assert not args, "older torch takes no argument"
        return False

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", older if old_torch else emulating)
    rt = runtime.setup_runtime("cuda", "auto")
    assert rt.amp_dtype == torch.float16 and rt.needs_grad_scaler
    assert "no native bf16" in capsys.readouterr().err


def test_precision_auto_keeps_bf16_where_the_gpu_has_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.train import runtime

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", lambda device: None)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
    assert runtime.setup_runtime("cuda", "auto").amp_dtype == torch.bfloat16
