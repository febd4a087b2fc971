"""Two processes under torchrun (gloo on the CPU): disjoint data, complete union, one model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

from pipeline.train.dataset import BlockDataset  # noqa: E402
from pipeline.train.sampler import BlockSampler  # noqa: E402

STEPS, BATCH, ACCUM, WORLD = 4, 4, 2, 2


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_two_ranks_see_disjoint_blocks_that_cover_the_stream(shards: str, tmp_path: Path) -> None:
    run = tmp_path / "run"
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={WORLD}", "-m", "pipeline.train",
        "--data", shards, "--model", "tiny-bert", "--output", str(run),
        "--max-steps", str(STEPS), "--batch-size", str(BATCH), "--grad-accum", str(ACCUM),
        "--eval-blocks", "32", "--log-steps", "1", "--workers", "1", "--threads", "1",
        "--log-samples", "--quiet",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=220, env=env)
    assert done.returncode == 0, done.stderr[-3000:]

    seen = []
    for rank in range(WORLD):
        lines = (run / f"samples-rank{rank}.jsonl").read_text().splitlines()
        steps = [json.loads(line) for line in lines]
        assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
        assert all(len(s["keys"]) == BATCH * ACCUM for s in steps)
        seen.append({k for s in steps for k in s["keys"]})
    assert not seen[0] & seen[1]  # no block trained on twice
    data = BlockDataset(shards, "train")
    stream = BlockSampler(data.chunk_sizes, batch_size=BATCH, seed=42).stream_keys(
        0, STEPS * ACCUM * WORLD * BATCH
    )
    assert seen[0] | seen[1] == set(stream.tolist())  # and none skipped

    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    start = next(m for m in metrics if m["event"] == "start")
    assert start["world_size"] == WORLD and start["blocks_per_step"] == WORLD * BATCH * ACCUM
    losses = [m["loss"] for m in metrics if m["event"] == "train"]
    assert len(losses) == STEPS and all(5.0 < x < 12.0 for x in losses)
    checkpoint = run / "checkpoints" / f"step-{STEPS:08d}"
    assert sorted(p.name for p in checkpoint.glob("rng-rank*.pt")) == [
        "rng-rank0.pt",
        "rng-rank1.pt",
    ]
    assert (run / "model" / "model.safetensors").is_file()


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_ranks_agree_on_the_micro_batch_when_only_one_runs_out_of_memory(
    shards: str, tmp_path: Path
) -> None:
    run = tmp_path / "run"
    script = Path(__file__).with_name("ddp_oom_rank1.py")
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone",
        f"--nproc_per_node={WORLD}", str(script),
        "--data", shards, "--model", "tiny-bert", "--output", str(run), "--max-steps", "2",
        "--batch-size", "8", "--eval-blocks", "16", "--log-steps", "1", "--workers", "0",
        "--threads", "1", "--quiet",
    ]  # fmt: skip
    repo = str(Path(__file__).resolve().parents[2])
    path = os.pathsep.join([repo, os.environ.get("PYTHONPATH", "")])
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    done = subprocess.run(command, capture_output=True, text=True, timeout=220, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr.count("micro-batch: 2 blocks per forward pass") == 1, done.stderr[-3000:]
    assert "out of memory at 8, 4" in done.stderr
    metrics = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["micro_batch_size"] for m in metrics if m["event"] == "train"] == [2, 2]
    state = json.loads((run / "checkpoints" / "step-00000002" / "trainer_state.json").read_text())
    assert state["micro_batch_size"] == 2
