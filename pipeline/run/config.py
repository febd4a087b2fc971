"""The run configuration: one frozen dataclass whose fields map 1:1 to `pipeline run` flags.

Only fields that change the output bytes live here (they are written into the manifest and
compared on resume); how a run executes (workers, backend, progress) is passed separately.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.errors import UsageError

PackingMode = Literal["framed", "concat"]
DtypeChoice = Literal["auto", "uint16", "uint32"]
BadFilePolicy = Literal["fail", "skip"]

MIN_BLOCK_SIZE = 8
MAX_BLOCK_SIZE = 65_536  # document starts are stored as uint16 positions inside a block


@dataclass(frozen=True, kw_only=True)
class RunConfig:
    inputs: tuple[str, ...]
    tokenizer: str
    output: str
    text_column: str = "text"
    id_column: str = "id"
    block_size: int = 128
    packing: PackingMode = "framed"
    validation_fraction: float = 0.05
    dtype: DtypeChoice = "auto"
    # Work units are planned to hold about this many bytes of text (from parquet metadata).
    # 32 MiB of text is ~8 M tokens: a few seconds of one core, ~20 MB of shard.
    unit_bytes: int = 32 * 1024 * 1024
    batch_blocks: int = 2048
    compression_level: int = 3
    on_bad_file: BadFilePolicy = "fail"

    def __post_init__(self) -> None:
        if not self.inputs:
            raise UsageError(
                "--input: expected at least one parquet/jsonl path, found none; pass "
                "--input with files, folders, globs or s3:// URIs"
            )
        if not MIN_BLOCK_SIZE <= self.block_size <= MAX_BLOCK_SIZE:
            raise UsageError(
                f"--block-size: expected {MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}, found "
                f"{self.block_size}; pick a block size in that range (128 is the default)"
            )
        if self.packing not in ("framed", "concat"):
            raise UsageError(
                f"--packing: expected framed or concat, found {self.packing!r}; use framed "
                "(RoBERTa-style blocks) or concat (the group_texts stream)"
            )
        if not 0.0 <= self.validation_fraction < 1.0:
            raise UsageError(
                f"--validation-fraction: expected a number in [0, 1), found "
                f"{self.validation_fraction}; use e.g. 0.05 for 5 % of documents"
            )
        if self.dtype not in ("auto", "uint16", "uint32"):
            raise UsageError(
                f"--dtype: expected auto, uint16 or uint32, found {self.dtype!r}; auto picks "
                "the smallest that holds the vocabulary"
            )
        if self.unit_bytes < 1:
            raise UsageError(
                f"--unit-bytes: expected a positive size, found {self.unit_bytes}; the default "
                "is 33554432 (32 MiB of text per work unit)"
            )
        if not 1 <= self.batch_blocks <= 1_000_000:
            raise UsageError(
                f"--batch-blocks: expected 1 to 1000000, found {self.batch_blocks}; the default "
                "2048 keeps record batches ~0.5 MB for the trainer's random access"
            )
        if not 1 <= self.compression_level <= 22:
            raise UsageError(
                f"--compression-level: expected a zstd level 1 to 22, found "
                f"{self.compression_level}; 3 is the default (9 is ~5 % smaller and ~4 % slower)"
            )
        if self.on_bad_file not in ("fail", "skip"):
            raise UsageError(
                f"--on-bad-file: expected fail or skip, found {self.on_bad_file!r}; use skip "
                "to leave unreadable files out and list them in the manifest"
            )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "inputs" else v for k, v in data.items() if k in fields})
