"""The training configuration: one frozen dataclass whose fields map 1:1 to `pipeline train` flags.

Defaults follow `transformers.TrainingArguments` where one exists (lr 5e-5, 3 epochs, batch 8
per device, no weight decay, clipping at 1.0, the best model by eval loss at the end as with
`load_best_model_at_end`), so a Trainer recipe moves over flag for flag. `--batch-size` is per
device as the user states it (`per_device_train_batch_size`); one optimizer step sees
batch_size x grad_accum x world_size blocks. What fits in memory at once, the micro-batch, is
`--micro-batch-size` or found on the first CUDA out-of-memory (pipeline/train/step.py).
"""

from __future__ import annotations

import argparse
import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from pipeline.errors import UsageError
from pipeline.format import storage


@dataclass(frozen=True, kw_only=True)
class TrainConfig:
    data: str
    model: str
    output: str
    epochs: float = 3.0
    max_steps: int = 0  # > 0 overrides --epochs
    lr: float = 5e-5
    warmup_ratio: float = 0.0
    warmup_steps: int = 0  # > 0 overrides --warmup-ratio
    weight_decay: float = 0.0
    batch_size: int = 8
    micro_batch_size: int = 0  # 0: the batch, halved on CUDA out-of-memory until it fits
    grad_accum: int = 1
    gradient_checkpointing: bool = False
    max_grad_norm: float = 1.0
    mlm_probability: float = 0.15
    mask_replace_prob: float = 0.8
    random_replace_prob: float = 0.1
    masking: str = "token"
    max_ngram: int = 3
    seed: int = 42
    eval_steps: int = 500  # 0: evaluate only per epoch and at the end
    eval_blocks: int = 0  # 0: the whole validation split
    eval_batch_size: int = 0  # 0: --batch-size
    save_steps: int = 0  # 0: with every evaluation
    save_total_limit: int = 2
    export: str = "best"
    log_steps: int = 10
    resume: str | None = None
    overwrite: bool = False
    workers: int = 2
    shuffle_window: int = 16
    doc_attention: bool = False
    compile: bool = False
    precision: str = "auto"
    device: str = "auto"
    threads: int = 0
    verify: bool = False
    log_samples: bool = False
    quiet: bool = False

    def __post_init__(self) -> None:
        positive = ("batch_size", "grad_accum", "log_steps", "shuffle_window")
        for name in positive:
            if getattr(self, name) < 1:
                raise UsageError(
                    f"--{_flag(name)}: expected at least 1, found {getattr(self, name)}"
                )
        not_negative = ("max_steps", "warmup_steps", "eval_steps", "eval_blocks", "threads")
        not_negative += ("eval_batch_size", "save_steps", "save_total_limit", "workers", "seed")
        not_negative += ("micro_batch_size",)
        for name in not_negative:
            if getattr(self, name) < 0:
                raise UsageError(
                    f"--{_flag(name)}: expected 0 or more, found {getattr(self, name)}"
                )
        if self.max_steps == 0 and self.epochs <= 0:
            raise UsageError(f"--epochs: expected a positive number, found {self.epochs}")
        if self.lr <= 0 or self.weight_decay < 0 or self.max_grad_norm < 0:
            raise UsageError(
                f"--lr, --weight-decay, --max-grad-norm: expected lr > 0 and the others >= 0, "
                f"found {self.lr}, {self.weight_decay}, {self.max_grad_norm}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise UsageError(
                f"--warmup-ratio: expected a number in [0, 1), found {self.warmup_ratio}"
            )
        if not 0.0 < self.mlm_probability <= 1.0:
            raise UsageError(
                f"--mlm-probability: expected a number in (0, 1], found {self.mlm_probability}"
            )
        fractions = (self.mask_replace_prob, self.random_replace_prob)
        if min(fractions) < 0 or sum(fractions) > 1.0:
            raise UsageError(
                f"--mask-replace-prob {fractions[0]} and --random-replace-prob {fractions[1]}: "
                "expected two numbers >= 0 whose sum is at most 1 (the rest stays unchanged)"
            )
        if self.micro_batch_size and self.batch_size % self.micro_batch_size:
            raise UsageError(
                f"--micro-batch-size {self.micro_batch_size}: expected a divisor of --batch-size "
                f"{self.batch_size}, found none; pick one (or 0 to find it automatically)"
            )
        if not 1 <= self.max_ngram <= 10:
            raise UsageError(f"--max-ngram: expected 1 to 10 words, found {self.max_ngram}")
        choices = {
            "precision": ("auto", "bf16", "fp16", "fp32"),
            "device": ("auto", "cpu", "cuda"),
            "export": ("best", "last"),
            "masking": ("token", "whole-word", "ngram"),
        }
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise UsageError(
                    f"--{name}: expected one of {allowed}, found {getattr(self, name)}"
                )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _flag(name: str) -> str:
    return name.replace("_", "-")


_HELP = {
    "data": "output folder of `pipeline run` (manifest.json, train/, validation/)",
    "model": "local model folder, config .json, or preset: tiny-bert, tiny-deberta-v2, small-bert",
    "output": "run folder: metrics.jsonl, checkpoints/, model/",
    "max_steps": "optimizer steps; > 0 overrides --epochs",
    "batch_size": "blocks per device per accumulation step, as stated "
    "(per_device_train_batch_size); run in micro-batches that fit",
    "micro_batch_size": "blocks per forward pass (a divisor of --batch-size); 0: the whole "
    "batch, halved on each CUDA out-of-memory until it fits, then kept (also on --resume)",
    "gradient_checkpointing": "recompute activations in backward: ~1/3 more compute, larger "
    "micro-batches fit",
    "export": "RUN/model at the end: best (by eval loss, as load_best_model_at_end) or last",
    "grad_accum": "micro-batches per optimizer step",
    "eval_steps": "evaluate every N steps (also per epoch and at the end); 0: only those",
    "eval_blocks": "validation blocks to evaluate on (0: all)",
    "save_steps": "checkpoint every N steps (0: at every evaluation)",
    "save_total_limit": "keep the newest N checkpoints plus the best by eval loss (0: all)",
    "masking": "token (default), whole-word, or ngram (spans of 1..--max-ngram whole words); "
    "see README",
    "max_ngram": "--masking ngram: the longest span in words (shorter spans are likelier)",
    "workers": "DataLoader worker processes",
    "shuffle_window": "record batches shuffled together (more: better mixing, more memory)",
    "doc_attention": "attend only within a document (BERT-family models, see README)",
    "precision": "auto: bf16 autocast on CUDA (fp16 + GradScaler where the GPU has no bf16), "
    "fp32 on CPU",
    "threads": "torch CPU threads (0: torch's default)",
    "overwrite": "start over in an --output that holds an earlier run (deletes the files a "
    "trainer run wrote, never others)",
    "verify": "re-read every shard and check it against the manifest before training",
    "log_samples": "write the block keys each rank trained on to samples-rank{R}.jsonl",
}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pipeline train", description="Train a masked-language model on pipeline shards."
    )
    for f in dataclasses.fields(TrainConfig):
        flag = f"--{_flag(f.name)}"
        help_text = _HELP.get(f.name)
        if f.type == "bool":
            p.add_argument(flag, action="store_true", help=help_text)
        elif f.name == "resume":
            p.add_argument(
                flag,
                nargs="?",
                const="latest",
                default=None,
                help="continue from the latest checkpoint in --output, or from this folder",
            )
        elif f.default is dataclasses.MISSING:
            p.add_argument(flag, required=True, help=help_text)
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            p.add_argument(flag, type=kind, default=f.default, help=help_text)
    p.add_argument("--storage-endpoint", default=None, metavar="URL", help=storage.ENDPOINT_HELP)
    return p


def parse_config(argv: Sequence[str]) -> TrainConfig:
    """The trainer's config; applies --storage-endpoint (how to reach the data, not part of
    the training run's identity) to this process."""
    values = vars(build_parser().parse_args(list(argv)))
    storage.use_endpoint(values.pop("storage_endpoint"))
    return TrainConfig(**values)
