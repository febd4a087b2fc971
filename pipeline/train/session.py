"""What one training run works with, built once before the loop: data, model, optimizer, resume.

`setup` reads the dataset's manifest, loads the model (from --model or the checkpoint that
--resume names), checks that the two match (pipeline/train/data_checks.py), builds sampler,
collator, optimizer and schedule, restores the checkpoint's optimizer, scheduler, GradScaler,
sampler, RNG states and micro-batch size when resuming, and wraps the objective in DDP (under
torchrun) and torch.compile when asked. An output without validation blocks (made with
`--validation-fraction 0`) trains without evaluation.
"""

from __future__ import annotations

import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import transformers

from pipeline.errors import DataError
from pipeline.format.manifest import load_manifest
from pipeline.format.paths import TOKENIZER_FILE
from pipeline.train import checkpoint
from pipeline.train.config import TrainConfig
from pipeline.train.data_checks import check_mask_token, expectation, has_validation
from pipeline.train.dataset import BlockDataset
from pipeline.train.masking import MaskingSpec, MLMCollator
from pipeline.train.models import (
    MaskedLMObjective,
    build_optimizer,
    build_scheduler,
    check_doc_attention,
    enable_gradient_checkpointing,
    load_model,
)
from pipeline.train.policies import BestModel
from pipeline.train.runtime import Runtime
from pipeline.train.sampler import BlockSampler
from pipeline.train.step import grad_scaler
from pipeline.train.word_masking import describe_masking
from pipeline.train.word_starts import load_word_table

if TYPE_CHECKING:  # a type only: importing it at run time loads transformers' vision extras
    from transformers import PreTrainedModel


@dataclass(kw_only=True)
class Session:
    """Everything the loop works with, built by `setup`."""

    model: PreTrainedModel
    objective: MaskedLMObjective
    runner: torch.nn.Module  # the objective, maybe in DDP, maybe compiled
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler | None  # fp16 only
    sampler: BlockSampler
    train_data: BlockDataset
    val_data: BlockDataset | None  # None: the output has no validation split
    spec: MaskingSpec
    collator: MLMCollator
    total_steps: int
    warmup_steps: int
    micro_batch_size: int  # blocks per forward pass
    find_micro_batch: bool  # search it on the first step (not given, not in the checkpoint)
    step: int = 0
    best: BestModel = field(default_factory=BestModel)
    resumed: bool = False


def setup(cfg: TrainConfig, rt: Runtime) -> Session:
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    transformers.utils.logging.disable_progress_bar()  # save_pretrained's bars: noise here
    manifest = load_manifest(cfg.data)
    tok, block_size = manifest.tokenizer, manifest.block_size
    check_mask_token(cfg.data, tok)
    resume_from = checkpoint.resolve_resume(cfg.output, cfg.resume) if cfg.resume else None
    prior = checkpoint.read_state(resume_from) if resume_from else None
    words = None  # whole-word and ngram masking: which ids begin a word (refused if unknown)
    if cfg.masking != "token":
        words = load_word_table(Path(cfg.data, TOKENIZER_FILE), tok.vocab_size)
    checkpoint.prepare_run(cfg.output, prior, cfg.to_dict(), rt.world_size, rt.rank)
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = load_model(str(resume_from) if resume_from else cfg.model, tok, block_size)
    if cfg.doc_attention:
        check_doc_attention(model)
    if cfg.gradient_checkpointing:
        enable_gradient_checkpointing(model, cfg.model)
    expect = expectation(cfg.model, prior, model, resume_from)
    docs = cfg.doc_attention
    starts = words is not None  # word masking: a document start begins a word
    window = cfg.shuffle_window
    train_data = BlockDataset(
        cfg.data, "train", expect=expect, cache_chunks=window + 2, with_doc_ids=docs,
        with_doc_starts=starts,
    )  # fmt: skip
    val_data = None
    if has_validation(manifest):
        val_data = BlockDataset(
            cfg.data, "validation", expect=expect, with_doc_ids=docs, with_doc_starts=starts
        )
    elif rt.rank == 0:
        print(
            f"note: {cfg.data} has no validation blocks (made with --validation-fraction 0): "
            "training without evaluation; RUN/model will hold the last weights",
            file=sys.stderr,
        )
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
        strategy=cfg.masking,
        max_ngram=cfg.max_ngram,
        words=words,
    )
    if rt.rank == 0:  # the rule used, beside the metrics: RUN/masking.json
        Path(cfg.output).mkdir(parents=True, exist_ok=True)
        record = describe_masking(spec) | {"tokenizer_sha256": tok.sha256}
        Path(cfg.output, "masking.json").write_text(json.dumps(record, indent=1) + "\n")
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
    kept = (prior or {}).get("micro_batch_size")  # found by an earlier part of this run
    if kept and cfg.batch_size % kept:  # --batch-size changed on resume: search again
        kept = None
    session = Session(
        model=model,
        objective=objective,
        runner=objective,
        optimizer=optimizer,
        scheduler=build_scheduler(optimizer, total_steps, warmup_steps),
        scaler=grad_scaler(rt, (prior or {}).get("grad_scaler")),
        sampler=sampler,
        train_data=train_data,
        val_data=val_data,
        spec=spec,
        collator=MLMCollator(spec, seed=cfg.seed, doc_attention=docs, with_keys=cfg.log_samples),
        total_steps=total_steps,
        warmup_steps=warmup_steps,
        micro_batch_size=cfg.micro_batch_size or kept or cfg.batch_size,
        find_micro_batch=not (cfg.micro_batch_size or kept),
    )
    if resume_from and prior:
        checkpoint.restore(resume_from, optimizer, session.scheduler, rt.rank, rt.device)
        sampler.load_state_dict(prior["sampler"])
        session.step = int(prior["step"])
        session.best = BestModel(loss=prior.get("best_eval_loss"), step=prior.get("best_step"))
        session.resumed = True
    else:
        torch.manual_seed(cfg.seed + rt.rank)  # dropout differs between ranks
    if rt.distributed:
        ids = [rt.device.index] if rt.cuda else None
        session.runner = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)
    if cfg.compile:
        session.runner = torch.compile(session.runner)
    return session
