"""What one training run works with, built once before the loop: data, model, optimizer, resume.

`setup` reads the dataset's manifest, loads the model (from --model or the checkpoint that
--resume names), checks that the two match, builds sampler, collator, optimizer and schedule,
restores the checkpoint's optimizer, scheduler, sampler and RNG states when resuming, and wraps
the objective in DDP (under torchrun) and torch.compile when asked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import transformers

from pipeline.errors import DataError
from pipeline.format.manifest import load_manifest
from pipeline.train import checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.dataset import BlockDataset
from pipeline.train.masking import MaskingSpec, MLMCollator
from pipeline.train.models import (
    MaskedLMObjective,
    build_optimizer,
    build_scheduler,
    check_doc_attention,
    load_model,
)
from pipeline.train.runtime import Runtime, expectation, verify_data
from pipeline.train.sampler import BlockSampler


@dataclass(kw_only=True)
class Session:
    """Everything the loop works with, built by `setup`."""

    model: Any
    objective: MaskedLMObjective
    runner: Any  # the objective, maybe in DDP, maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: Any
    sampler: BlockSampler
    train_data: BlockDataset
    val_data: BlockDataset
    spec: MaskingSpec
    collator: MLMCollator
    total_steps: int
    warmup_steps: int
    step: int = 0
    best_eval_loss: float | None = None
    resumed: bool = False


def setup(cfg: TrainConfig, rt: Runtime) -> Session:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's bars: noise here
    if cfg.verify:
        verify_data(cfg.data, rt)
    manifest = load_manifest(cfg.data)
    tok, block_size = manifest.tokenizer, manifest.block_size
    resume_from = checkpoint.resolve_resume(cfg.output, cfg.resume) if cfg.resume else None
    prior = checkpoint.read_state(resume_from) if resume_from else None
    checkpoint.prepare_run(cfg.output, prior, cfg.to_dict(), rt.world_size, rt.rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = load_model(str(resume_from) if resume_from else cfg.model, tok, block_size)
    if cfg.doc_attention:
        check_doc_attention(model)
    expect = expectation(cfg.model, prior, model, resume_from)
    docs = cfg.doc_attention
    window = cfg.shuffle_window
    train_data = BlockDataset(
        cfg.data, "train", expect=expect, cache_chunks=window + 2, with_doc_ids=docs
    )
    val_data = BlockDataset(cfg.data, "validation", expect=expect, with_doc_ids=docs)
    if prior and prior["data"]["num_blocks"] != len(train_data):
        raise DataError(
            f"{cfg.data}: checkpoint {resume_from} expects {prior['data']['num_blocks']} "
            f"training blocks, found {len(train_data)}; resume on the data it was trained on"
        )
    spec = MaskingSpec.from_manifest(
        tok,
        probability=cfg.mlm_probability,
        mask_fraction=cfg.mask_replace_prob,
        random_fraction=cfg.random_replace_prob,
    )
    sampler = BlockSampler(
        train_data.chunk_sizes,
        batch_size=cfg.batch_size,
        seed=cfg.seed,
        rank=rt.rank,
        world_size=rt.world_size,
        window_chunks=window,
    )
    step_blocks = cfg.batch_size * cfg.grad_accum * rt.world_size
    total_steps = cfg.max_steps or math.ceil(cfg.epochs * len(train_data) / step_blocks)
    warmup_steps = cfg.warmup_steps or math.ceil(cfg.warmup_ratio * total_steps)
    model.to(rt.device).train()
    objective = MaskedLMObjective(model)
    optimizer = build_optimizer(model, cfg.lr, cfg.weight_decay, fused=rt.cuda)
    session = Session(
        model=model,
        objective=objective,
        runner=objective,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total_steps, warmup_steps),
        sampler=sampler,
        train_data=train_data,
        val_data=val_data,
        spec=spec,
        collator=MLMCollator(spec, seed=cfg.seed, doc_attention=docs, with_keys=cfg.log_samples),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    if resume_from and prior:
        checkpoint.restore(resume_from, optimizer, session.scheduler, rt.rank, rt.device)
        sampler.load_state_dict(prior["sampler"])
        session.step, session.best_eval_loss = int(prior["step"]), prior.get("best_eval_loss")
        session.resumed = True
    else:
        torch.manual_seed(cfg.seed + rt.rank)  # dropout differs between ranks
    if rt.distributed:
        ids = [rt.device.index] if rt.cuda else None
        session.runner = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)
    if cfg.compile:
        session.runner = torch.compile(session.runner)
    return session
