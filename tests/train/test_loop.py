"""`pipeline train` end to end on CPU: learning, exact resume, checkpoints, errors."""

from __future__ import annotations

import json
import shutil
import sys
import types
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.commands.cli import main as cli_main  # noqa: E402
from pipeline.format import storage  # noqa: E402
from pipeline.train import checkpoint  # noqa: E402
from pipeline.train.loop import main  # noqa: E402
from tests.conftest import UNIGRAM  # noqa: E402

QUICK = ["--batch-size", "8", "--eval-blocks", "32", "--workers", "0", "--threads", "1"]
QUICK += ["--quiet", "--lr", "2e-3"]


def records(run: Path, event: str) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["event"] == event]


def train(shards: str, run: Path, *extra: str) -> int:
    return main(["--data", shards, "--output", str(run), *QUICK, *extra])


@pytest.mark.timeout(300)
def test_validation_perplexity_falls_well_below_its_start(shards: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    code = train(shards, run, "--model", "tiny-bert", "--max-steps", "200", "--log-steps",
                 "20", "--eval-steps", "100", "--eval-blocks", "256", "--warmup-ratio", "0.05",
                 "--weight-decay", "0.01")  # fmt: skip
    assert code == 0
    evals = records(run, "eval")
    assert [e["step"] for e in evals] == [0, 100, 200]
    first, last = evals[0]["eval_ppl"], evals[-1]["eval_ppl"]
    # Measured: 30,229 at step 0 (a uniform guess over 30,522 ids), 1,155 after 200 steps.
    assert first > 20_000
    assert last < 0.1 * first, evals
    trains = records(run, "train")
    assert len(trains) == 10 and trains[-1]["loss"] < trains[0]["loss"] - 1.0
    assert all(r["tokens_per_s"] > 0 and r["samples_per_s"] > 0 for r in trains)
    assert trains[-1]["lr"] == 0.0  # linear decay ends at zero
    model = run / "model"
    assert (model / "model.safetensors").is_file() and (model / "tokenizer.json").is_file()


@pytest.mark.timeout(300)
def test_resume_repeats_the_uninterrupted_loss_curve(shards: str, tmp_path: Path) -> None:
    whole = tmp_path / "whole"
    args = ["--model", "tiny-bert", "--max-steps", "12", "--save-steps", "6", "--log-steps", "1"]
    args += ["--eval-steps", "0", "--warmup-steps", "3", "--weight-decay", "0.01", "--log-samples"]
    assert train(shards, whole, *args) == 0
    kept = [p.name for p in checkpoint.list_checkpoints(str(whole))]
    assert kept == ["step-00000006", "step-00000012"]
    # An interrupted run: its last checkpoint is at step 6 and its metrics go further.
    cut = tmp_path / "cut"
    shutil.copytree(whole, cut)
    shutil.rmtree(cut / "checkpoints" / "step-00000012")
    shutil.rmtree(cut / "model")
    assert train(shards, cut, *args, "--resume", "--workers", "2") == 0
    losses = [r["loss"] for r in records(whole, "train")]
    resumed = [r["loss"] for r in records(cut, "train")]
    assert len(losses) == 12 and losses[0] > 0
    assert resumed == losses  # exactly: same batches, masks, dropout and optimizer state
    # What holds on a GPU too (where kernels drift the losses by ~1e-3): the same blocks in the
    # same order with the same masked positions and replacements, step by step.
    samples = [(run / "samples-rank0.jsonl").read_text().splitlines() for run in (whole, cut)]
    assert len(samples[0]) == 12 and samples[1] == samples[0]
    assert len({json.loads(line)["masks"] for line in samples[0]}) == 12
    assert records(cut, "eval")[-1]["eval_loss"] == records(whole, "eval")[-1]["eval_loss"]
    state = checkpoint.read_state(checkpoint.checkpoint_path(str(cut), 12))
    assert state["sampler"]["position"] == 12 * 8 and state["step"] == 12


def test_rotation_keeps_the_newest_and_the_best(tmp_path: Path) -> None:
    for step, loss in [(10, 3.0), (20, 1.0), (30, 2.0), (40, None), (50, 2.5)]:
        path = checkpoint.checkpoint_path(str(tmp_path), step)
        path.mkdir(parents=True)
        (path / checkpoint.STATE_FILE).write_text(json.dumps({"eval_loss": loss}))
    (tmp_path / "checkpoints" / ".tmp-step-00000060").mkdir()  # a crashed save
    kept = checkpoint.rotate(str(tmp_path), keep_last=2)
    assert [p.name for p in kept] == ["step-00000020", "step-00000040", "step-00000050"]
    checkpoint.remove_partial(str(tmp_path))
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000020",
        "step-00000040",
        "step-00000050",
    ]
    assert checkpoint.resolve_resume(str(tmp_path), "latest").name == "step-00000050"


def test_a_checkpoint_is_synced_to_disk_before_it_is_named(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[Path] = []
    real = storage.fsync_path  # the project's one fsync helper, used by checkpoints too

    def recording(path: Path) -> None:
        synced.append(Path(path))
        real(path)

    monkeypatch.setattr(storage, "fsync_path", recording)
    weight = torch.nn.Parameter(torch.ones(3))
    optimizer = torch.optim.SGD([weight], lr=0.1)
    model = types.SimpleNamespace(
        save_pretrained=lambda folder: Path(folder, "model.safetensors").write_bytes(b"w")
    )
    final = checkpoint.save_checkpoint(
        str(tmp_path), 5, model=model, optimizer=optimizer,
        scheduler=torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0),
        state={"step": 5}, rank=0, device=torch.device("cpu"), barrier=lambda: None,
        keep_last=2,
    )  # fmt: skip
    tmp = final.with_name(f".tmp-{final.name}")
    files = sorted(p.name for p in final.iterdir())
    assert files == sorted([checkpoint.STATE_FILE, "model.safetensors", "optimizer.pt",
                            "rng-rank0.pt", "scheduler.pt"])  # fmt: skip
    each = synced[:-2]
    assert sorted(p.name for p in each) == files and all(p.parent == tmp for p in each)
    assert synced[-2:] == [tmp, final.parent], "the folder, then the rename"


@pytest.mark.parametrize(
    "extra",
    [
        ["--model", "tiny-bert", "--doc-attention", "--grad-accum", "2"],
        ["--model", "tiny-deberta-v2", "--mlm-probability", "0.3"],
        ["--model", "tiny-bert", "--gradient-checkpointing", "--micro-batch-size", "2"],
        ["--model", "tiny-bert", "--precision", "fp16"],
    ],
)
def test_other_models_and_options_train(shards: str, tmp_path: Path, extra: list[str]) -> None:
    run = tmp_path / "run"
    assert train(shards, run, *extra, "--max-steps", "3", "--log-steps", "1") == 0
    losses = [r["loss"] for r in records(run, "train")]
    assert len(losses) == 3 and all(6.0 < x < 12.0 for x in losses)


def test_a_trained_folder_is_a_model_and_its_tokenizer_is_checked(
    shards: str, tmp_path: Path
) -> None:
    first = tmp_path / "first"
    assert train(shards, first, "--model", "tiny-bert", "--max-steps", "2") == 0
    second = tmp_path / "second"
    model = str(first / "model")
    assert train(shards, second, "--model", model, "--max-steps", "2") == 0
    assert len(records(second, "train")) == 1
    shutil.copyfile(UNIGRAM / "tokenizer.json", first / "model" / "tokenizer.json")
    code = train(shards, tmp_path / "third", "--model", model, "--max-steps", "2")
    assert code == 1  # DataError: tokenized with another tokenizer


def test_pipeline_train_passes_every_flag_to_the_trainer(shards: str, tmp_path: Path) -> None:
    """`pipeline train --data ...`: the first trainer flag must not be taken by cli.py."""
    run = tmp_path / "run"
    argv = ["train", "--data", shards, "--output", str(run), "--model", "tiny-bert"]
    assert cli_main([*argv, *QUICK, "--max-steps", "1"]) == 0
    assert len(records(run, "train")) == 1


def test_user_errors_exit_with_a_message(
    shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def fails(code: int, match: str, *args: str) -> None:
        assert train(shards, tmp_path / "run", *args) == code
        assert match in capsys.readouterr().err

    fails(2, "--model bert-large: expected a local model folder", "--model", "bert-large")
    fails(2, "--batch-size: expected at least 1, found 0", "--model", "tiny-bert",
          "--batch-size", "0")  # fmt: skip
    fails(2, "--resume: expected a checkpoint in", "--model", "tiny-bert", "--resume")
    fails(2, "--doc-attention: expected a model that accepts a 4-D attention mask, found "
          "model_type deberta-v2", "--model", "tiny-deberta-v2", "--doc-attention")  # fmt: skip
    fails(2, "--mask-replace-prob 0.9 and --random-replace-prob 0.2", "--model", "tiny-bert",
          "--mask-replace-prob", "0.9", "--random-replace-prob", "0.2")  # fmt: skip
    assert train(shards, tmp_path / "run", "--model", "tiny-bert", "--resume") == 2
    err = capsys.readouterr().err  # a whole message on one line, however long: never cut
    assert len(err) > 160 and err.count("\n") == 1
    assert err.rstrip().endswith("pass the path of a checkpoint folder")
    fake = types.ModuleType("pipeline.commands.verification")
    fake.verify_output = lambda output: [f"{output}/train/shard-00001.arrow: sha256 differs"]
    monkeypatch.setitem(sys.modules, "pipeline.commands.verification", fake)
    fails(1, "found 1 problems (", "--model", "tiny-bert", "--verify")


def test_a_run_folder_is_resumed_or_overwritten_never_mixed(
    shards: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "1") == 0
    capsys.readouterr()
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "2") == 2
    assert "expected a new run folder, found checkpoints of an earlier run" in (
        capsys.readouterr().err
    )
    assert train(shards, run, "--model", "tiny-bert", "--resume", "--seed", "7") == 2
    assert "--seed 7: expected 42 as in the checkpoint" in capsys.readouterr().err
    state_file = checkpoint.checkpoint_path(str(run), 1) / checkpoint.STATE_FILE
    state = json.loads(state_file.read_text())
    state["data"]["block_size"] = 512
    state_file.write_text(json.dumps(state))
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "2", "--resume") == 1
    assert "expects block size 512, found 128" in capsys.readouterr().err
    (run / "checkpoints" / ".tmp-step-00000009").mkdir()  # a crashed save
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "2", "--overwrite",
                 "--log-steps", "1") == 0  # fmt: skip
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step-00000002"]
    assert [r["step"] for r in records(run, "train")] == [1, 2]


def test_each_rank_saves_and_restores_only_its_own_gpu_generator(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Resuming where fewer GPUs are visible must not touch (or index) the others."""
    calls: list[tuple[str, object]] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: calls.append(("get", device))
                        or torch.tensor([7], dtype=torch.uint8))  # fmt: skip
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: calls.append(
        ("set", (int(state[0]), device))))  # fmt: skip

    def every_gpu(*args: object) -> None:
        raise AssertionError("touched every visible GPU")

    monkeypatch.setattr(torch.cuda, "get_rng_state_all", every_gpu)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", every_gpu)
    gpu1 = torch.device("cuda", 1)
    state = checkpoint.rng_state(gpu1)
    assert calls == [("get", gpu1)] and int(state["cuda"][0]) == 7
    checkpoint.set_rng_state(state, gpu1)
    assert calls[-1] == ("set", (7, gpu1))
    # A checkpoint written before: every GPU's state in a list; rank 1 takes entry 1.
    legacy = {**state, "cuda": [torch.tensor([3], dtype=torch.uint8), torch.tensor([4],
              dtype=torch.uint8)]}  # fmt: skip
    checkpoint.set_rng_state(legacy, gpu1)
    assert calls[-1] == ("set", (4, gpu1))
    cpu_state = checkpoint.rng_state(torch.device("cpu"))
    assert "cuda" not in cpu_state and len(calls) == 3


@pytest.mark.timeout(300)
def test_the_best_model_by_eval_loss_is_exported_and_the_last_kept_for_resuming(
    shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.train import loop

    losses = iter([5.0, 3.0, 2.0, 4.0, 3.5])  # steps 0, 2, 4, 6, 8: the best is step 4

    def scripted(*args: object, **kwargs: object) -> float:
        return next(losses)

    monkeypatch.setattr(loop, "evaluate", scripted)
    run = tmp_path / "run"
    # The seed's settings: keep one checkpoint, export the best (the default).
    assert train(shards, run, "--model", "tiny-bert", "--max-steps", "8", "--eval-steps", "2",
                 "--save-total-limit", "1") == 0  # fmt: skip
    kept = [p.name for p in checkpoint.list_checkpoints(str(run))]
    assert kept == ["step-00000004", "step-00000008"], "the best and the last"
    export = json.loads((run / "model" / "trainer_export.json").read_text())
    assert export == {"step": 4, "eval_loss": 2.0, "chosen": "best eval loss", "total_steps": 8,
                      "files": ["config.json", "model.safetensors", "tokenizer.json"]}  # fmt: skip
    best_weights = checkpoint.checkpoint_path(str(run), 4) / "model.safetensors"
    last_weights = checkpoint.checkpoint_path(str(run), 8) / "model.safetensors"
    exported = (run / "model" / "model.safetensors").read_bytes()
    assert exported == best_weights.read_bytes() != last_weights.read_bytes()
    assert (run / "model" / "tokenizer.json").is_file()
    assert records(run, "export")[0]["step"] == 4
    state = checkpoint.read_state(checkpoint.checkpoint_path(str(run), 8))
    assert (state["best_step"], state["best_eval_loss"]) == (4, 2.0)
    losses = iter([9.0, 8.0])  # steps 0 and 2
    last = tmp_path / "last"
    assert train(shards, last, "--model", "tiny-bert", "--max-steps", "2", "--eval-steps", "0",
                 "--export", "last") == 0  # fmt: skip
    export = json.loads((last / "model" / "trainer_export.json").read_text())
    assert export["step"] == 2 and export["chosen"] == "last step"


@pytest.mark.timeout(300)
def test_the_micro_batch_found_on_a_cuda_oom_is_said_once_and_kept_on_resume(
    shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.train.models import MaskedLMObjective

    forward = MaskedLMObjective.forward
    sizes: list[int] = []

    def small_gpu(self: MaskedLMObjective, input_ids: torch.Tensor, *args: object,
                  **kwargs: object) -> object:  # fmt: skip
        if self.training:
            sizes.append(int(input_ids.shape[0]))
            if input_ids.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        return forward(self, input_ids, *args, **kwargs)

    monkeypatch.setattr(MaskedLMObjective, "forward", small_gpu)
    run = tmp_path / "run"
    args = ["--model", "tiny-bert", "--save-steps", "2", "--eval-steps", "0", "--log-steps", "1"]
    assert train(shards, run, *args, "--max-steps", "2") == 0
    err = capsys.readouterr().err
    assert err.count("micro-batch:") == 1 and "out of memory at 8, 4" in err
    assert "micro-batch: 2 blocks per forward pass, 4 per per-device batch of 8" in err
    assert sizes[:2] == [8, 4] and set(sizes[2:]) == {2}
    assert [r["micro_batch_size"] for r in records(run, "train")] == [2, 2]
    state = checkpoint.read_state(checkpoint.checkpoint_path(str(run), 2))
    assert state["micro_batch_size"] == 2
    sizes.clear()
    assert train(shards, run, *args, "--max-steps", "4", "--resume") == 0
    assert set(sizes) == {2} and len(sizes) == 2 * 4, "no new search: 2 steps x 4 micro-batches"
    assert "out of memory" not in capsys.readouterr().err
    assert [r["micro_batch_size"] for r in records(run, "train")] == [2, 2, 2, 2]


def test_verify_runs_before_the_process_group_exists(
    shards: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Re-reading ~100 GB takes longer than NCCL's 10-minute timeout: no rank may wait for it
    inside a collective, so it happens before init_process_group (in setup_runtime)."""
    from pipeline.errors import UsageError
    from pipeline.train import loop

    order: list[str] = []
    monkeypatch.setattr(loop, "verify_data", lambda data: order.append(f"verify {data}"))

    def runtime(device: str, precision: str) -> None:
        order.append("process group")
        raise UsageError("stop here")

    monkeypatch.setattr(loop, "setup_runtime", runtime)
    assert train(shards, tmp_path / "run", "--model", "tiny-bert", "--verify") == 2
    assert order == [f"verify {shards}", "process group"]
