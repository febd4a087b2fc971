"""`pipeline train`: set up (pipeline/train/session.py), then one readable training loop.

Data: `BlockDataset` (shards, read on demand) -> `BlockSampler` (this rank's micro-batches) ->
`MLMCollator` (dynamic masking) through a torch DataLoader. Model: `MaskedLMObjective` over a
Hugging Face masked-LM model, in DDP when started by `torchrun`, optionally compiled. One
optimizer step = grad_accum micro-batches on every rank; its loss is the mean over all masked
tokens of the step (counted across micro-batches and ranks before the backward passes), so the
gradient does not depend on how a step is cut into micro-batches or ranks.
"""

from __future__ import annotations

import dataclasses
import math
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm import tqdm

from pipeline.errors import PipelineError, one_line
from pipeline.format import storage
from pipeline.train import checkpoint
from pipeline.train.config import TrainConfig, parse_config
from pipeline.train.dataset_cache import local_dataset
from pipeline.train.runtime import (
    MetricsLog,
    Runtime,
    evaluate,
    export_model,
    log_samples,
    perplexity,
    setup_runtime,
)
from pipeline.train.session import Session, setup

MODEL_INPUTS = ("input_ids", "labels", "attention_mask")


def main(argv: list[str]) -> int:
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
        rt = setup_runtime(cfg.device, cfg.precision)
        try:
            train(cfg, rt)
        finally:
            rt.close()
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    return 0


def train(cfg: TrainConfig, rt: Runtime) -> dict[str, Any]:
    """Train; returns the last evaluation ({"step", "eval_loss", "eval_ppl"})."""
    s = setup(cfg, rt)
    block_size = s.train_data.block_size
    step_blocks = cfg.batch_size * cfg.grad_accum * rt.world_size
    metrics = MetricsLog(cfg.output, rt.rank == 0, resume_step=s.step if s.resumed else None)
    metrics.write(
        {"event": "start", "step": s.step, "total_steps": s.total_steps,
         "warmup_steps": s.warmup_steps, "blocks_per_step": step_blocks,
         "world_size": rt.world_size, "train_blocks": len(s.train_data),
         "validation_blocks": len(s.val_data)}
    )  # fmt: skip
    last_eval: dict[str, Any] = {}

    def run_eval() -> float:
        loss = evaluate(
            s.objective, s.val_data, s.spec, num_blocks=cfg.eval_blocks,
            batch_size=cfg.eval_batch_size or cfg.batch_size, doc_attention=cfg.doc_attention,
            rt=rt,
        )  # fmt: skip
        last_eval.update(step=s.step, eval_loss=loss, eval_ppl=perplexity(loss))
        metrics.write(
            {"event": "eval", "epoch": s.sampler.epoch_of(s.sampler.position), **last_eval}
        )
        return loss

    if not s.resumed:
        run_eval()
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
    samples_path = Path(cfg.output, f"samples-rank{rt.rank}.jsonl")
    if cfg.log_samples and not s.resumed:
        samples_path.write_text("")
    bar = tqdm(total=s.total_steps, initial=s.step, disable=cfg.quiet or rt.rank != 0)
    interval_loss = torch.zeros((), dtype=torch.float64, device=rt.device)
    interval_masked, interval_steps, started = 0, 0, time.perf_counter()
    epoch = int(s.sampler.epoch_of(s.sampler.position))
    while s.step < s.total_steps:
        micro = [next(batches) for _ in range(cfg.grad_accum)]
        if cfg.log_samples:
            log_samples(samples_path, s.step + 1, micro, len(s.train_data))
        n_masked = rt.all_reduce_int(sum(int((b["labels"] != -100).sum()) for b in micro))
        scale = rt.world_size / max(n_masked, 1)  # DDP averages over ranks: undo, then mean
        for i, batch in enumerate(micro):
            inputs = {k: batch[k].to(rt.device, non_blocking=rt.cuda) for k in MODEL_INPUTS
                      if k in batch}  # fmt: skip
            last = i == len(micro) - 1
            with nullcontext() if last or not rt.distributed else s.runner.no_sync():
                with torch.autocast(rt.device.type, dtype=torch.bfloat16, enabled=rt.bf16):
                    loss_sum, _ = s.runner(**inputs)
                (loss_sum * scale).backward()
            interval_loss += loss_sum.detach()
        max_norm = cfg.max_grad_norm if cfg.max_grad_norm > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(s.model.parameters(), max_norm)
        s.optimizer.step()
        s.scheduler.step()
        s.optimizer.zero_grad(set_to_none=True)
        s.step += 1
        s.sampler.mark_consumed(cfg.grad_accum)
        interval_masked += n_masked
        interval_steps += 1
        bar.update(1)
        if s.step % cfg.log_steps == 0 or s.step == s.total_steps:
            seconds = time.perf_counter() - started
            blocks = interval_steps * step_blocks
            record = {
                "event": "train",
                "step": s.step,
                "epoch": s.sampler.epoch_of(s.sampler.position),
                "loss": rt.all_reduce_float(interval_loss) / max(interval_masked, 1),
                "lr": s.scheduler.get_last_lr()[0],
                "grad_norm": float(grad_norm),
                "samples_per_s": blocks / seconds,
                "tokens_per_s": blocks * block_size / seconds,
                "masked_tokens_per_s": interval_masked / seconds,
            }
            metrics.write(record)
            bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{record['lr']:.2e}",
                            tok_s=f"{record['tokens_per_s']:,.0f}")  # fmt: skip
            interval_loss.zero_()
            interval_masked, interval_steps, started = 0, 0, time.perf_counter()
        new_epoch = int(s.sampler.epoch_of(s.sampler.position))
        at_end = s.step == s.total_steps
        do_eval = (
            at_end or new_epoch > epoch or bool(cfg.eval_steps and s.step % cfg.eval_steps == 0)
        )
        epoch = new_epoch
        eval_loss = run_eval() if do_eval else None
        if eval_loss is not None and (s.best_eval_loss is None or eval_loss < s.best_eval_loss):
            s.best_eval_loss = eval_loss
        if at_end or (s.step % cfg.save_steps == 0 if cfg.save_steps else do_eval):
            _save(cfg, rt, s, eval_loss)
    bar.close()
    if rt.rank == 0:
        export_model(s.model, cfg.data, cfg.output)
        print(f"done: {s.step} steps, eval loss {last_eval.get('eval_loss', math.nan):.4f}, "
              f"perplexity {last_eval.get('eval_ppl', math.nan):.2f} -> {cfg.output}",
              file=sys.stderr)  # fmt: skip
    return last_eval


def _save(cfg: TrainConfig, rt: Runtime, s: Session, eval_loss: float | None) -> None:
    state = {
        "step": s.step,
        "sampler": s.sampler.state_dict(),
        "epoch": s.sampler.epoch_of(s.sampler.position),
        "eval_loss": eval_loss,
        "best_eval_loss": s.best_eval_loss,
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
        barrier=rt.barrier,
        keep_last=cfg.save_total_limit,
    )
