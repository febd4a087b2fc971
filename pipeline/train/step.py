"""One optimizer step: the per-device batch as the user states it, run in micro-batches that fit.

`--batch-size` is what the user asks for per device (the seed: 512 blocks of 128, with HF's
`auto_find_batch_size`). DeBERTa-v3-large keeps ~0.35 GB per block for backward under bf16, so
512 blocks need ~177 GB: more than any one GPU. The batch is therefore cut into micro-batches of
`--micro-batch-size` blocks, or, when that is 0, of a size found on the first step: try the
whole batch, and on a CUDA out-of-memory halve (to the next divisor of the batch) and retry, as
`auto_find_batch_size` does. The size found is said once and stored in every checkpoint, so
`--resume` keeps it.

The loss of a step is the sum of token losses over all its micro-batches and ranks divided by
the number of masked tokens over all of them, counted on the host before any forward pass; so
the gradient (and the update) does not depend on the cut: 1 x 512 and 4 x 128 differ only in
float summation order (tested on a tiny model).

Under DDP every rank must take part in each gradient all-reduce, so a rank must never fail a
step alone: the search runs as a probe of the bare objective, outside DDP (no collective at
all: DDP also broadcasts buffers in every forward, and a rank that fails mid-probe would leave
the others waiting there; a 2-rank test hung so), then the ranks agree by one all-reduce whether
any of them ran out of memory, and the probe's gradients and RNG draws are discarded.
Optimizer state (AdamW: two tensors the size of the parameters) is held during the probe when
the optimizer has none yet, so that the size found still fits once it exists. A later
out-of-memory in the forward or backward pass (the masked count varies a little per batch) is
retried at half the size in a single process, and ends a distributed run with the advice to
resume with a smaller `--micro-batch-size`. One in gradient clipping or the optimizer step is
never retried (fp16's GradScaler has unscaled the gradients already, and a step stopped partway
may have updated some parameters): it ends the run with one line of advice. On the CPU there
is no probe (its allocator does not raise CUDA's error); a CUDA out-of-memory simulated there
in tests takes the single-process retry, and the probe is tested directly and under 2-rank
torchrun (tests/train/ddp_oom_rank1.py).

The hot path has no host-device sync: the masked counts and the head's gather positions are
computed on the host from the CPU batch, the count all-reduce stays on the device, and only
logging reads numbers back.
"""

from __future__ import annotations

import gc
import math
import sys
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any

import torch

from pipeline.errors import PipelineError, brief
from pipeline.train.models import masked_targets
from pipeline.train.runtime import Runtime

MODEL_INPUTS = ("input_ids", "labels", "attention_mask")
ALLOC_HINT = "PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"


def split_batch(batch: dict[str, torch.Tensor], size: int) -> list[dict[str, torch.Tensor]]:
    """A per-device batch as micro-batches of `size` blocks (views, no copies)."""
    n = int(batch["input_ids"].shape[0])
    return [{k: v[i : i + size] for k, v in batch.items()} for i in range(0, n, size)]


def smaller_micro_batch(batch_size: int, current: int) -> int | None:
    """The largest divisor of `batch_size` at most half of `current`; None below 1."""
    for size in range(current // 2, 0, -1):
        if batch_size % size == 0:
            return size
    return None


@dataclass
class StepResult:
    loss_sum: torch.Tensor  # this rank's summed token loss, on the device (no sync)
    masked: torch.Tensor  # masked tokens over all ranks, on the device
    grad_norm: torch.Tensor


class TrainStep:
    """Runs optimizer steps over lists of per-device batches (one per accumulation step)."""

    def __init__(
        self,
        *,
        runner: torch.nn.Module,
        objective: torch.nn.Module | None = None,
        model: torch.nn.Module,
        optimizer: torch.optim.Optimizer,
        scheduler: torch.optim.lr_scheduler.LRScheduler,
        rt: Runtime,
        batch_size: int,
        micro_batch_size: int,
        automatic: bool,
        max_grad_norm: float,
        scaler: torch.amp.GradScaler | None = None,
        say: bool = True,
    ) -> None:
        self.runner, self.model, self.rt = runner, model, rt
        self.objective = objective or runner  # the objective itself: outside DDP and compile
        self.optimizer, self.scheduler, self.scaler = optimizer, scheduler, scaler
        self.batch_size = batch_size
        self.micro_batch_size = micro_batch_size
        self.searching = automatic  # until the first step has found a size that fits
        self.max_norm = max_grad_norm if max_grad_norm > 0 else math.inf
        self.say = say
        self.tried: list[int] = []  # sizes that ran out of memory

    def __call__(self, batches: list[dict[str, torch.Tensor]]) -> StepResult:
        if self.searching:
            self._find_micro_batch(batches)
        loss_sum, masked = self._gradients(batches)
        try:
            grad_norm = self._update()
        except torch.OutOfMemoryError as exc:
            failed = brief(exc, 200)
        else:
            return StepResult(loss_sum=loss_sum, masked=masked, grad_norm=grad_norm)
        # Not retried: the gradients are unscaled (a GradScaler refuses a second unscale_) and
        # an optimizer step that ran out of memory partway may have updated some parameters.
        self.optimizer.zero_grad(set_to_none=True)
        _free_memory(self.rt)
        raise PipelineError(
            f"optimizer step: expected the gradient clipping and the optimizer update to fit in "
            f"GPU memory, found a CUDA out-of-memory there (after the forward and backward "
            f"passes, so a smaller micro-batch is no retry: part of the update may be applied); "
            f"rerun with --resume from the last checkpoint and {ALLOC_HINT}, "
            f"--gradient-checkpointing or a smaller --micro-batch-size (a divisor of "
            f"{self.batch_size}) to leave the optimizer more memory ({failed})"
        )

    def _gradients(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        """Forward and backward over the step's micro-batches; on a CUDA out-of-memory there
        (nothing updated yet) the gradients are dropped and the step redone at half the size.
        Returns (this rank's loss sum, masked tokens over all ranks)."""
        shrunk = False
        while True:
            try:
                result = self._accumulate(batches)
            except torch.OutOfMemoryError as exc:
                failed = brief(exc, 200)  # the text only: the exception's frames hold activations
            else:
                if shrunk:
                    self._announce()  # once, with every size that failed
                return result
            # Outside the handler, which holds the frames that hold the activations.
            self.optimizer.zero_grad(set_to_none=True)
            _free_memory(self.rt)
            if self.rt.distributed:  # the other ranks are inside an all-reduce: stop all
                raise PipelineError(
                    f"--micro-batch-size {self.micro_batch_size}: expected micro-batches that "
                    f"fit in GPU memory, found a CUDA out-of-memory after the first step; rerun "
                    f"with --resume and a smaller --micro-batch-size (a divisor of "
                    f"{self.batch_size}), --gradient-checkpointing, or {ALLOC_HINT} ({failed})"
                )
            self._shrink()
            shrunk = True

    def _accumulate(self, batches: list[dict[str, torch.Tensor]]) -> tuple[torch.Tensor, ...]:
        micro = [m for b in batches for m in split_batch(b, self.micro_batch_size)]
        masked = self.rt.all_reduce_sum(sum(int((m["labels"] != -100).sum()) for m in micro))
        # DDP averages gradients over ranks: multiply back, then divide by the global count.
        scale = self.rt.world_size / masked.clamp(min=1).to(torch.float32)
        return self._forward_backward(micro, scale, probe=False), masked

    def _update(self) -> torch.Tensor:
        """Unscale (fp16), clip and apply the accumulated gradients; returns the grad norm."""
        if self.scaler is not None:
            self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.max_norm)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def _forward_backward(
        self, micro: list[dict[str, torch.Tensor]], scale: torch.Tensor, *, probe: bool
    ) -> torch.Tensor:
        """Forward and backward over the micro-batches. The probe runs the bare objective: DDP
        runs collectives in forward too (buffer broadcasts), which a rank that fails
        mid-probe would leave the others waiting in; its gradients are discarded anyway."""
        rt = self.rt
        runner = self.objective if probe else self.runner
        total = torch.zeros((), dtype=torch.float64, device=rt.device)
        for i, batch in enumerate(micro):
            inputs = {k: batch[k] for k in MODEL_INPUTS if k in batch}  # pinned by the loader
            targets = masked_targets(batch["labels"])
            if rt.cuda:  # a copy from pageable memory may wait for the stream: pin (cached)
                targets = {k: v.pin_memory() for k, v in targets.items()}
            inputs |= targets
            inputs = {k: v.to(rt.device, non_blocking=rt.cuda) for k, v in inputs.items()}
            hold = rt.distributed and not probe and i < len(micro) - 1
            with runner.no_sync() if hold else nullcontext():
                with rt.autocast():
                    loss_sum, _ = runner(**inputs)
                loss = loss_sum * scale.to(rt.device)
                (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
            total += loss_sum.detach()
        return total

    def _find_micro_batch(self, batches: list[dict[str, torch.Tensor]]) -> None:
        """Probe the first step until every rank fits; leaves no gradient and no RNG draw."""
        cpu_rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state(self.rt.device) if self.rt.cuda else None
        while True:
            failed = False
            reserve = _optimizer_state_stand_in(self.optimizer) if self.rt.cuda else []
            try:
                micro = [m for b in batches for m in split_batch(b, self.micro_batch_size)]
                count = sum(int((m["labels"] != -100).sum()) for m in micro)
                scale = torch.tensor(1.0 / max(count, 1))
                self._forward_backward(micro, scale, probe=True)
            except torch.OutOfMemoryError:
                failed = True
            del reserve
            self.optimizer.zero_grad(set_to_none=True)
            _free_memory(self.rt)
            if not self.rt.any_rank(failed):
                break
            self._shrink()
        torch.set_rng_state(cpu_rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state(cuda_rng, self.rt.device)
        self.searching = False
        self._announce()

    def _shrink(self) -> None:
        self.tried.append(self.micro_batch_size)
        smaller = smaller_micro_batch(self.batch_size, self.micro_batch_size)
        if smaller is None:
            raise PipelineError(
                "micro-batch: expected at least 1 block to fit in GPU memory, found CUDA out of "
                "memory with a micro-batch of 1 block; use --gradient-checkpointing, a smaller "
                f"model, shorter blocks or a larger GPU (and try {ALLOC_HINT})"
            )
        self.micro_batch_size = smaller

    def _announce(self) -> None:
        if not self.say or self.rt.rank != 0:
            return
        found = (
            f" (out of memory at {', '.join(map(str, self.tried))}; {ALLOC_HINT} can help "
            "when allocation sizes vary)"
            if self.tried
            else ""
        )
        parts = self.batch_size // self.micro_batch_size
        print(
            f"micro-batch: {self.micro_batch_size} blocks per forward pass, {parts} per "
            f"per-device batch of {self.batch_size}{found}; kept on --resume",
            file=sys.stderr,
            flush=True,
        )


def _optimizer_state_stand_in(optimizer: torch.optim.Optimizer) -> list[torch.Tensor]:
    """Memory the size of AdamW's state (2 x the trainable parameters) while it does not
    exist yet (before the first optimizer step), so that the probe measures a real step."""
    if optimizer.state:
        return []
    params = [p for group in optimizer.param_groups for p in group["params"] if p.requires_grad]
    return [torch.empty_like(p) for p in params for _ in range(2)]


def _free_memory(rt: Runtime) -> None:
    gc.collect()
    if rt.cuda:
        torch.cuda.empty_cache()


def grad_scaler(rt: Runtime, state: dict[str, Any] | None) -> torch.amp.GradScaler | None:
    """A GradScaler for fp16 (restored from a checkpoint's state when resuming), else None."""
    if not rt.needs_grad_scaler:
        return None
    scaler = torch.amp.GradScaler(rt.device.type)
    if state:
        scaler.load_state_dict(state)
    return scaler
