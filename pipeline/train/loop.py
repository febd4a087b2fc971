"""`pipeline train`: set up (pipeline/train/session.py), then one readable training loop.

Data: `BlockDataset` (shards, read on demand) -> `BlockSampler` (this rank's per-device
batches) -> `MLMCollator` (dynamic masking) through a torch DataLoader. Model:
`MaskedLMObjective` over a Hugging Face masked-LM model, in DDP when started by `torchrun`,
optionally compiled. One optimizer step (`TrainStep`, pipeline/train/step.py) = grad_accum
per-device batches on every rank, each run in micro-batches that fit in memory; its loss is the
mean over all masked tokens of the step, so the gradient does not depend on how a step is cut
into micro-batches or ranks. When to evaluate, save and what to export are the named policies
of pipeline/train/policies.py.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.errors import PipelineError, one_line
from pipeline.format import storage
from pipeline.train import checkpoint
from pipeline.train.config import TrainConfig, parse_config
from pipeline.train.data_checks import verify_data
from pipeline.train.dataset_cache import local_dataset
from pipeline.train.policies import EvalPolicy, SavePolicy, choose_export
from pipeline.train.runtime import (
    MetricsLog,
    Runtime,
    evaluate,
    export_model,
    log_samples,
    perplexity,
    setup_runtime,
    start_samples_log,
)
from pipeline.train.session import Session, setup
from pipeline.train.step import StepResult, TrainStep


def main(argv: list[str]) -> int:
    cfg = None
    try:
        cfg = parse_config(argv)
        if storage.is_remote(cfg.data):
            # Shards are memory-mapped: an s3:// dataset is mirrored into a local cache first,
            # every shard checked against the manifest's sha256 (pipeline/dataset_cache.py).
            # Before the process group exists: ranks take turns on a file lock there, the first
            # downloads and the others only check, so no collective can time out meanwhile.
            local, fetched = local_dataset(cfg.data)
            print(f"data: {cfg.data} cached in {local} ({fetched:,} bytes fetched)", flush=True)
            cfg = dataclasses.replace(cfg, data=str(local))
        if cfg.verify:  # before the process group too: ~100 GB outlasts NCCL's timeout
            verify_data(cfg.data)
        rt = setup_runtime(cfg.device, cfg.precision)
        try:
            train(cfg, rt)
        finally:
            rt.close()
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        if cfg is not None and os.environ.get("RANK", "0") == "0":
            print(f"interrupted: {resume_advice(cfg.output)}", file=sys.stderr)
        return 130
    return 0


def resume_advice(run: str) -> str:
    found = checkpoint.list_checkpoints(run)
    if not found:
        return "no checkpoint was written yet; rerun the same command to start again"
    return (
        f"rerun the same command with --resume to continue from {found[-1]} (without "
        "--resume it is refused, to protect this run's checkpoints)"
    )


def train(cfg: TrainConfig, rt: Runtime) -> dict[str, Any]:
    """Train; returns the last evaluation ({"step", "eval_loss", "eval_ppl"}; {} without)."""
    s = setup(cfg, rt)
    step_blocks = cfg.batch_size * cfg.grad_accum * rt.world_size
    metrics = MetricsLog(cfg.output, rt.rank == 0, resume_step=s.step if s.resumed else None)
    metrics.write(
        {"event": "start", "step": s.step, "total_steps": s.total_steps,
         "warmup_steps": s.warmup_steps, "blocks_per_step": step_blocks,
         "world_size": rt.world_size, "train_blocks": len(s.train_data),
         "validation_blocks": len(s.val_data) if s.val_data else 0}
    )  # fmt: skip
    eval_policy = EvalPolicy(every=cfg.eval_steps)
    save_policy = SavePolicy(every=cfg.save_steps)
    last_eval: dict[str, Any] = {}
    if not s.resumed and s.val_data is not None:
        last_eval = _evaluate(cfg, rt, s, metrics)
    loader = DataLoader(
        s.train_data,
        sampler=s.sampler,
        batch_size=None,
        collate_fn=s.collator,
        num_workers=cfg.workers,
        pin_memory=rt.cuda,
        prefetch_factor=4 if cfg.workers else None,
        generator=torch.Generator().manual_seed(cfg.seed),  # leaves the global RNG alone
    )
    batches = iter(loader)
    run_step = TrainStep(
        runner=s.runner, objective=s.objective, model=s.model, optimizer=s.optimizer,
        scheduler=s.scheduler, rt=rt, batch_size=cfg.batch_size,
        micro_batch_size=s.micro_batch_size, automatic=s.find_micro_batch and rt.cuda,
        max_grad_norm=cfg.max_grad_norm, scaler=s.scaler,
    )  # fmt: skip
    samples_path = Path(cfg.output, f"samples-rank{rt.rank}.jsonl")
    if cfg.log_samples:
        start_samples_log(samples_path, s.step if s.resumed else None)
    bar = tqdm(total=s.total_steps, initial=s.step, disable=cfg.quiet or rt.rank != 0)
    interval = Interval(rt.device)
    epoch = int(s.sampler.epoch_of(s.sampler.position))
    while s.step < s.total_steps:
        waited = time.perf_counter()
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        interval.data_wait += time.perf_counter() - waited
        if cfg.log_samples:
            log_samples(samples_path, s.step + 1, micro, len(s.train_data))
        result = run_step(micro)
        s.step += 1
        s.sampler.mark_consumed(cfg.grad_accum)
        s.micro_batch_size = run_step.micro_batch_size
        interval.add(result)
        bar.update(1)
        at_end = s.step == s.total_steps
        if s.step % cfg.log_steps == 0 or at_end:
            record = interval.record(s, rt, step_blocks, result.grad_norm)
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:,.0f}")  # fmt: skip
            interval = Interval(rt.device)
        new_epoch = int(s.sampler.epoch_of(s.sampler.position)) > epoch
        epoch = int(s.sampler.epoch_of(s.sampler.position))
        eval_point = eval_policy.due(s.step, new_epoch=new_epoch, at_end=at_end)
        evaluated = eval_point and s.val_data is not None
        new_best = False
        if evaluated:
            last_eval = _evaluate(cfg, rt, s, metrics)
            new_best = s.best.update(s.step, last_eval["eval_loss"])
        if save_policy.due(s.step, eval_point=eval_point, new_best=new_best, at_end=at_end):
            _save(cfg, rt, s, last_eval["eval_loss"] if evaluated else None)
    bar.close()
    if rt.rank == 0:
        _export(cfg, s, last_eval, metrics)
    return last_eval


class Interval:
    """Sums over the steps since the last log line, kept on the device until it is written."""

    def __init__(self, device: torch.device) -> None:
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.masked = torch.zeros((), dtype=torch.int64, device=device)
        self.steps = 0
        self.data_wait = 0.0  # seconds the loop waited for the DataLoader
        self.started = time.perf_counter()

    def add(self, result: StepResult) -> None:
        self.loss += result.loss_sum
        self.masked += result.masked
        self.steps += 1

    def record(
        self, s: Session, rt: Runtime, step_blocks: int, grad_norm: torch.Tensor
    ) -> dict[str, Any]:
        seconds = time.perf_counter() - self.started  # the one host-device sync per log line
        blocks = self.steps * step_blocks
        masked = int(self.masked.item())
        return {
            "event": "train",
            "step": s.step,
            "epoch": s.sampler.epoch_of(s.sampler.position),
            "loss": rt.all_reduce_float(self.loss) / max(masked, 1),
            "lr": s.scheduler.get_last_lr()[0],
            "grad_norm": float(grad_norm),
            "samples_per_s": blocks / seconds,
            "tokens_per_s": blocks * s.train_data.block_size / seconds,
            "masked_tokens_per_s": masked / seconds,
            "data_wait_share": self.data_wait / seconds,
            "micro_batch_size": s.micro_batch_size,
        }


def _evaluate(cfg: TrainConfig, rt: Runtime, s: Session, metrics: MetricsLog) -> dict[str, Any]:
    assert s.val_data is not None, "the loop evaluates only with validation data"
    loss = evaluate(
        s.objective, s.val_data, s.spec, num_blocks=cfg.eval_blocks,
        batch_size=cfg.eval_batch_size or s.micro_batch_size, doc_attention=cfg.doc_attention,
        rt=rt,
    )  # fmt: skip
    result = {"step": s.step, "eval_loss": loss, "eval_ppl": perplexity(loss)}
    metrics.write({"event": "eval", "epoch": s.sampler.epoch_of(s.sampler.position), **result})
    return result


def _save(cfg: TrainConfig, rt: Runtime, s: Session, eval_loss: float | None) -> None:
    state = {
        "step": s.step,
        "sampler": s.sampler.state_dict(),
        "epoch": s.sampler.epoch_of(s.sampler.position),
        "eval_loss": eval_loss,
        "best_eval_loss": s.best.loss,
        "best_step": s.best.step,
        "micro_batch_size": s.micro_batch_size,
        "grad_scaler": s.scaler.state_dict() if s.scaler is not None else None,
        "total_steps": s.total_steps,
        "world_size": rt.world_size,
        "config": cfg.to_dict(),
        "data": s.train_data.identity(),
    }
    checkpoint.save_checkpoint(
        cfg.output,
        s.step,
        model=s.model,
        optimizer=s.optimizer,
        scheduler=s.scheduler,
        state=state,
        rank=rt.rank,
        device=rt.device,
        barrier=rt.barrier,
        keep_last=cfg.save_total_limit,
    )


def _export(cfg: TrainConfig, s: Session, last_eval: dict[str, Any], log: MetricsLog) -> None:
    """RUN/model: the best checkpoint by eval loss (--export best) or the final weights."""
    choice = choose_export(cfg.export, s.best, s.step, last_eval.get("eval_loss"))
    source = None
    if choice.step != s.step:
        source = checkpoint.checkpoint_path(cfg.output, choice.step)
        if not (source / checkpoint.STATE_FILE).is_file():
            print(f"warning: {source} (the best by eval loss) is gone; exporting the last "
                  "weights", file=sys.stderr)  # fmt: skip
            source = None
            choice = choose_export("last", s.best, s.step, last_eval.get("eval_loss"))
    info = {**dataclasses.asdict(choice), "total_steps": s.step}
    export_model(s.model, cfg.data, cfg.output, checkpoint=source, info=info)
    log.write({"event": "export", **info})
    loss = choice.eval_loss
    scored = (
        f"eval loss {loss:.4f}, perplexity {perplexity(loss):.2f}"
        if loss is not None and not math.isnan(loss)
        else "no evaluation"
    )
    print(f"done: {s.step} steps; model/ holds step {choice.step} ({choice.chosen}), "
          f"{scored} -> {cfg.output}", file=sys.stderr)  # fmt: skip
