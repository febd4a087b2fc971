"""The run configuration: one frozen dataclass whose fields map 1:1 to `pipeline run` flags.

Only fields that change the output bytes live here (they are written into the manifest and
compared on resume); how a run executes (workers, backend, progress) is passed separately.
Everything about a field is said once: its type, choices (a `Literal`) and default in the
dataclass, its help in `_HELP`, its limits in `_LIMITS`. The parser (`add_arguments`) and the
validation (`__post_init__`) are built from these, as `train/config.py` does for the trainer.
"""

from __future__ import annotations

import argparse
import dataclasses
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from pipeline.errors import UsageError

PackingMode = Literal["framed", "concat"]
DtypeChoice = Literal["auto", "uint16", "uint32"]
BadFilePolicy = Literal["fail", "skip"]

MIN_BLOCK_SIZE = 8
MAX_BLOCK_SIZE = 65_536  # document starts are stored as uint16 positions inside a block
MAX_BATCH_BLOCKS = 1_000_000


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
                f"{flag_of('inputs')}: expected at least one parquet/jsonl path, found none; "
                f"pass {flag_of('inputs')} with files, folders, globs or s3:// URIs"
            )
        for name, value in vars(self).items():  # in field order: the first bad flag is named
            if name in _CHOICES and value not in (allowed := _CHOICES[name][0]):
                raise UsageError(
                    f"{flag_of(name)}: expected {_either(allowed)}, found {value!r}; "
                    + _CHOICES[name][1]
                )
            if name in _LIMITS and not _LIMITS[name][0](value):
                _, expected, fix = _LIMITS[name]
                raise UsageError(
                    f"{flag_of(name)}: expected {expected}, found {value}; "
                    + fix.format(default=_FIELDS[name].default)
                )

    def to_dict(self) -> dict[str, Any]:
        return {
            k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RunConfig:
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if k == "inputs" else v for k, v in data.items() if k in fields})


_FIELDS = {f.name: f for f in dataclasses.fields(RunConfig)}
_TYPES = typing.get_type_hints(RunConfig)
_FLAG_NAMES = {"inputs": "input"}  # one --input flag takes many paths

_HELP = {
    "inputs": "parquet/jsonl(.zst/.gz) files, folders, globs or s3:// URIs",
    "tokenizer": "a tokenizer.json or a local Hugging Face model folder",
    "output": "output folder or s3:// URI",
    "text_column": "the column (JSON field) that holds each document's text",
    "id_column": "the column that names each document (keys the validation split)",
    "block_size": f"tokens per packed block ({MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE})",
    "packing": "framed: documents joined by [SEP], cut and each block framed [CLS] ... [SEP] "
    "(RoBERTa's FULL-SENTENCES); concat: one token stream cut into blocks (group_texts)",
    "validation_fraction": "share of documents (whole documents) in the validation split",
    "dtype": "token id type of the shards; auto: the smallest that holds the vocabulary",
    "unit_bytes": "text bytes per work unit (32 MiB is ~8 M tokens)",
    "batch_blocks": "blocks per Arrow record batch",
    "compression_level": "zstd level of the shards (1 to 22)",
    "on_bad_file": "fail: stop at an unreadable file; skip: leave it out (or its damaged "
    "rows) and list it in the manifest",
}

# name -> (allowed values, how to choose); the values come from the field's Literal type.
_CHOICES: dict[str, tuple[tuple[str, ...], str]] = {
    name: (typing.get_args(_TYPES[name]), fix)
    for name, fix in {
        "packing": "use framed (RoBERTa-style blocks) or concat (the group_texts stream)",
        "dtype": "auto picks the smallest that holds the vocabulary",
        "on_bad_file": "use skip to leave unreadable files out and list them in the manifest",
    }.items()
}

# name -> (test, what is expected, the fix; {default} is the field's default)
_LIMITS: dict[str, tuple[Callable[[Any], bool], str, str]] = {
    "block_size": (
        lambda v: MIN_BLOCK_SIZE <= v <= MAX_BLOCK_SIZE,
        f"{MIN_BLOCK_SIZE} to {MAX_BLOCK_SIZE}",
        "pick a block size in that range ({default} is the default)",
    ),
    "validation_fraction": (
        lambda v: 0.0 <= v < 1.0,
        "a number in [0, 1)",
        "use e.g. 0.05 for 5 % of documents",
    ),
    "unit_bytes": (
        lambda v: v >= 1,
        "a positive size",
        "the default is {default} (32 MiB of text per work unit)",
    ),
    "batch_blocks": (
        lambda v: 1 <= v <= MAX_BATCH_BLOCKS,
        f"1 to {MAX_BATCH_BLOCKS}",
        "the default {default} keeps record batches ~0.5 MB for the trainer's random access",
    ),
    "compression_level": (
        lambda v: 1 <= v <= 22,
        "a zstd level 1 to 22",
        "{default} is the default (9 is ~5 % smaller and ~4 % slower)",
    ),
}


def flag_of(name: str) -> str:
    return "--" + _FLAG_NAMES.get(name, name).replace("_", "-")


def _either(choices: tuple[str, ...]) -> str:
    return ", ".join(choices[:-1]) + " or " + choices[-1]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """One flag per RunConfig field: type, choices and default from the dataclass, help
    from _HELP (every field has one; the default is appended)."""
    for f in dataclasses.fields(RunConfig):
        kind = _TYPES[f.name]
        options: dict[str, Any] = {"dest": f.name, "help": _HELP[f.name]}
        if f.default is dataclasses.MISSING:
            options["required"] = True
        else:
            options["default"] = f.default
            options["help"] += " (default: %(default)s)"
        if typing.get_origin(kind) is tuple:
            options.update(nargs="+", metavar="PATH")
        elif typing.get_origin(kind) is Literal:
            options["choices"] = typing.get_args(kind)
        elif kind in (int, float):
            options["type"] = kind
        parser.add_argument(flag_of(f.name), **options)


def from_args(args: argparse.Namespace) -> RunConfig:
    return RunConfig(
        **{
            f.name: tuple(v) if isinstance(v := getattr(args, f.name), list) else v
            for f in dataclasses.fields(RunConfig)
        }
    )
