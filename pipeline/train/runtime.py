"""What the loop needs around it: device and process group, evaluation, metrics, data checks.

Under `torchrun` (WORLD_SIZE > 1) the process group uses NCCL on GPUs and gloo on the CPU; each
rank drives the GPU `cuda:LOCAL_RANK`. Without torchrun it is one process on one device.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pipeline.errors import DataError, UsageError
from pipeline.format.paths import TOKENIZER_FILE
from pipeline.train.dataset import BlockDataset, DataExpectation
from pipeline.train.masking import MaskingSpec, MLMCollator

# Evaluation masks depend on neither --seed nor the epoch, so every run is scored on the same
# masked positions of the same validation blocks.
EVAL_SEED = 20_240_601


@dataclass(frozen=True, kw_only=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    bf16: bool

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_int(self, value: int) -> int:
        if not self.distributed:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        dist.all_reduce(t)
        return int(t.item())

    def all_reduce_float(self, value: torch.Tensor) -> float:
        t = value.detach().to(torch.float64).reshape(1).clone()
        if self.distributed:
            dist.all_reduce(t)
        return float(t.item())

    def close(self) -> None:
        if self.distributed and dist.is_initialized():
            dist.destroy_process_group()


def setup_runtime(device: str, precision: str) -> Runtime:
    if device == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device cuda: expected a CUDA GPU, found none; use --device cpu")
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if cuda:
        target = torch.device("cuda", local_rank)
        torch.cuda.set_device(target)
    else:
        target = torch.device("cpu")
    rank = 0
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank = dist.get_rank()
    bf16 = precision == "bf16" or (precision == "auto" and cuda)
    return Runtime(rank=rank, world_size=world, device=target, bf16=bf16)


@torch.no_grad()
def evaluate(
    objective: torch.nn.Module,
    data: BlockDataset,
    spec: MaskingSpec,
    *,
    num_blocks: int,
    batch_size: int,
    doc_attention: bool,
    rt: Runtime,
) -> float:
    """Mean loss over the masked tokens of the first `num_blocks` validation blocks."""
    keys = np.arange(rt.rank, min(num_blocks or len(data), len(data)), rt.world_size)
    batches = [keys[i : i + batch_size].tolist() for i in range(0, keys.size, batch_size)]
    collator = MLMCollator(spec, seed=EVAL_SEED, doc_attention=doc_attention)
    loader = DataLoader(
        data, sampler=batches, batch_size=None, collate_fn=collator, pin_memory=rt.cuda
    )
    objective.eval()
    sums = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for batch in loader:
        inputs = {k: v.to(rt.device, non_blocking=rt.cuda) for k, v in batch.items()}
        with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.bf16):
            loss_sum, count = objective(**inputs)
        sums[0] += loss_sum.double()
        sums[1] += count
    objective.train()
    if rt.distributed:
        dist.all_reduce(sums)
    return float(sums[0] / sums[1].clamp(min=1))


def perplexity(mean_loss: float) -> float:
    return math.exp(min(mean_loss, 700.0))  # exp overflows a float past ~709


class MetricsLog:
    """RUN/metrics.jsonl, one JSON object a line (rank 0 only). A resumed run first drops the
    lines an interrupted run wrote after its checkpoint, so the file reads as one run."""

    def __init__(self, run: str, enabled: bool, resume_step: int | None) -> None:
        self.path = Path(run, "metrics.jsonl")
        self.enabled = enabled
        if not enabled:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if resume_step is not None and self.path.exists():
            kept = [
                line
                for line in self.path.read_text().splitlines()
                if line.strip() and json.loads(line).get("step", 0) <= resume_step
            ]
            self.path.write_text("".join(line + "\n" for line in kept))
        elif resume_step is None:
            self.path.write_text("")

    def write(self, record: dict[str, Any]) -> None:
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")


def expectation(
    model_spec: str, prior: dict[str, Any] | None, model: Any, resume_from: Path | None
) -> DataExpectation:
    """What the data must match: the checkpoint's data, or the model folder's tokenizer."""
    rows = int(model.get_input_embeddings().num_embeddings)
    if prior is not None:
        data = prior["data"]
        return DataExpectation(
            tokenizer_sha256=data["tokenizer_sha256"],
            block_size=int(data["block_size"]),
            dtype=data["dtype"],
            num_embeddings=rows,
            source=f"checkpoint {resume_from}",
        )
    tokenizer_file = Path(model_spec, "tokenizer.json")
    sha = None
    if tokenizer_file.is_file():
        from pipeline.ingest.tokenization import describe_tokenizer, load_tokenizer

        sha = describe_tokenizer(load_tokenizer(str(tokenizer_file))).sha256
    elif Path(model_spec).is_dir():
        print(
            f"note: {model_spec} has no tokenizer.json; cannot check that the shards were "
            "tokenized with the model's tokenizer",
            file=sys.stderr,
        )
    return DataExpectation(
        tokenizer_sha256=sha, num_embeddings=rows, source=f"--model {model_spec}"
    )


def log_samples(path: Path, step: int, micro: list[dict[str, Any]], num_blocks: int) -> None:
    """Append the keys (epoch * num_blocks + block) this rank trains on in this step."""
    keys = []
    for batch in micro:
        keys += (batch.pop("epoch") * num_blocks + batch.pop("block_index")).tolist()
    with open(path, "a") as f:
        f.write(f'{{"step": {step}, "keys": {keys}}}\n')


def export_model(model: Any, data: str, output: str) -> None:
    """RUN/model: the final weights plus the data's tokenizer.json, ready for from_pretrained."""
    final = Path(output, "model")
    tmp = final.with_name(".tmp-model")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp))
    shutil.copyfile(Path(data, TOKENIZER_FILE), tmp / TOKENIZER_FILE)
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp, final)


def verify_data(data: str, rt: Runtime) -> None:
    from pipeline.commands.verification import verify_output  # reads every shard: only here

    problems = verify_output(data) if rt.rank == 0 else []
    if rt.all_reduce_int(len(problems)):
        shown = "; ".join(problems[:5]) if problems else "listed by rank 0"
        raise DataError(
            f"{data}: expected shards that match the manifest, found {len(problems)} problems "
            f"({shown}); rerun `pipeline run` on this output"
        )
