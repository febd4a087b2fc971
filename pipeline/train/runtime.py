"""What the loop needs around it: device, precision and process group, evaluation, metrics,
the samples log and the exported model.

Under `torchrun` (WORLD_SIZE > 1) the process group uses NCCL on GPUs and gloo on the CPU; each
rank drives the GPU `cuda:LOCAL_RANK`. Without torchrun it is one process on one device.
`--precision auto` is bf16 autocast where the GPU has bf16, fp16 with a GradScaler where it has
not (said in one line), fp32 on the CPU.
"""

from __future__ import annotations

import inspect
import json
import math
import os
import shutil
import sys
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from pipeline.errors import UsageError
from pipeline.format.paths import TOKENIZER_FILE
from pipeline.train.checkpoint import model_files
from pipeline.train.dataset import BlockDataset
from pipeline.train.masking import MaskingSpec, MLMCollator
from pipeline.train.models import masked_targets
from pipeline.train.run_folder import EXPORT_DIR, EXPORT_FILE, EXPORT_TMP, foreign_files

# Evaluation masks depend on neither --seed nor the epoch, so every run is scored on the same
# masked positions of the same validation blocks.
EVAL_SEED = 20_240_601


@dataclass(frozen=True, kw_only=True)
class Runtime:
    rank: int
    world_size: int
    device: torch.device
    amp_dtype: torch.dtype | None = None  # autocast dtype of forward and loss; None: fp32

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def needs_grad_scaler(self) -> bool:
        """fp16 gradients underflow without loss scaling; bf16 has fp32's exponent range."""
        return self.amp_dtype == torch.float16

    def autocast(self) -> Any:
        return torch.autocast(
            self.device.type, dtype=self.amp_dtype or torch.float32, enabled=bool(self.amp_dtype)
        )

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def all_reduce_sum(self, value: int | torch.Tensor) -> torch.Tensor:
        """A sum over ranks as a tensor on the device: no host-device sync (the hot path)."""
        t = torch.as_tensor(value, dtype=torch.int64).reshape(1).to(self.device)
        if self.distributed:
            dist.all_reduce(t)
        return t[0]

    def all_reduce_float(self, value: torch.Tensor) -> float:
        t = value.detach().to(torch.float64).reshape(1).clone()
        if self.distributed:
            dist.all_reduce(t)
        return float(t.item())

    def any_rank(self, flag: bool) -> bool:
        """True on every rank when `flag` is True on any (a collective: all ranks must call)."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], dtype=torch.int64, device=self.device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

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
    bf16_ok = cuda and gpu_has_bf16()
    amp_dtype, note = choose_precision(precision, cuda=cuda, bf16_supported=bf16_ok)
    rank = 0
    if world > 1:
        dist.init_process_group("nccl" if cuda else "gloo")
        rank = dist.get_rank()
    if note and rank == 0:
        print(note, file=sys.stderr)
    return Runtime(rank=rank, world_size=world, device=target, amp_dtype=amp_dtype)


def gpu_has_bf16() -> bool:
    """Native bf16 (compute capability >= 8). torch >= 2.3's `is_bf16_supported` defaults to
    `including_emulation=True`, which says True on a V100 or T4 too (emulated, many times
    slower); older torch has no such argument and answers for native support only."""
    check = torch.cuda.is_bf16_supported
    if "including_emulation" in inspect.signature(check).parameters:
        return bool(check(including_emulation=False))
    return bool(check())


def choose_precision(
    precision: str, *, cuda: bool, bf16_supported: bool
) -> tuple[torch.dtype | None, str | None]:
    """(autocast dtype or None for fp32, a one-line note when `auto` falls back)."""
    if precision == "bf16":
        return torch.bfloat16, None
    if precision == "fp16":
        return torch.float16, None
    if precision == "fp32" or not cuda:
        return None, None
    if bf16_supported:
        return torch.bfloat16, None
    return torch.float16, (
        "note: --precision auto: this GPU has no native bf16 (compute capability below 8.0); "
        "training in fp16 autocast with a GradScaler (--precision fp32 to avoid it)"
    )


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
        inputs |= {k: v.to(rt.device) for k, v in masked_targets(batch["labels"]).items()}
        with rt.autocast():
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


def start_samples_log(path: Path, resume_step: int | None) -> None:
    """A new samples file, or on resume the lines up to the checkpoint's step (an interrupted
    run may have logged steps past it, which the resumed run logs again)."""
    if resume_step is None or not path.exists():
        path.write_text("")
        return
    lines = path.read_text().splitlines()
    kept = [line for line in lines if line.strip() and json.loads(line)["step"] <= resume_step]
    path.write_text("".join(line + "\n" for line in kept))


def log_samples(path: Path, step: int, micro: list[dict[str, Any]], num_blocks: int) -> None:
    """Append the keys (epoch * num_blocks + block) this rank trains on in this step, and a
    CRC-32 of the step's labels (which positions are masked, to what): a resumed run must show
    the same of both as an uninterrupted one, on any device."""
    keys, crc = [], 0
    for batch in micro:
        keys += (batch.pop("epoch") * num_blocks + batch.pop("block_index")).tolist()
        crc = zlib.crc32(batch["labels"].numpy().tobytes(), crc)
    with open(path, "a") as f:
        f.write(f'{{"step": {step}, "keys": {keys}, "masks": {crc}}}\n')


def export_model(
    model: Any, data: str, output: str, *, checkpoint: Path | None, info: dict[str, Any]
) -> Path:
    """RUN/model, ready for from_pretrained: the weights of `checkpoint` (the best by eval
    loss) or, without one, `model`'s current weights; plus the data's tokenizer.json and
    EXPORT_FILE saying which step they come from and which files the export wrote. It
    replaces only an earlier export (checked at the start, and again here)."""
    final = Path(output, EXPORT_DIR)
    tmp = Path(output, EXPORT_TMP)
    marker = json.dumps(info, indent=1, sort_keys=True) + "\n"
    _refuse_foreign(output)
    if tmp.exists():  # a crashed export (_refuse_foreign: its marker says so)
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    (tmp / EXPORT_FILE).write_text(marker)  # first: a crash leaves a folder known as ours
    if checkpoint is None:
        model.save_pretrained(str(tmp))
    else:
        for path in model_files(checkpoint):
            shutil.copyfile(path, tmp / path.name)
    shutil.copyfile(Path(data, TOKENIZER_FILE), tmp / TOKENIZER_FILE)
    files = sorted(p.name for p in tmp.iterdir() if p.name != EXPORT_FILE)
    (tmp / EXPORT_FILE).write_text(
        json.dumps({**info, "files": files}, indent=1, sort_keys=True) + "\n"
    )
    _refuse_foreign(output)  # a file dropped into model/ while the run trained
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def _refuse_foreign(output: str) -> None:
    found = [p for p in foreign_files(output) if p.name in (EXPORT_DIR, EXPORT_TMP)
             or p.parent.name == EXPORT_DIR]  # fmt: skip
    if found:
        raise UsageError(
            f"{found[0]}: expected an export of `pipeline train` to replace, found files it did "
            f"not write ({', '.join(str(p) for p in found[:5])}); move them out of "
            f"{Path(output, EXPORT_DIR)} and rerun with --resume to export (the weights are in "
            f"the checkpoints)"
        )
