"""`pipeline run`'s flags are built from RunConfig: every field has one, with the dataclass's
type, choices and default, and a bad value is refused with the same one line as before."""

from __future__ import annotations

import argparse
import dataclasses
import re
import typing

import pytest

from pipeline.commands import cli
from pipeline.errors import UsageError
from pipeline.run.config import RunConfig, add_arguments, flag_of, from_args

REQUIRED = ["--input", "a.parquet", "b.jsonl", "--tokenizer", "tok.json", "--output", "out"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(exit_on_error=False)
    add_arguments(parser)
    return parser


def _actions() -> dict[str, argparse.Action]:
    return {a.dest: a for a in _parser()._actions}


def test_every_field_has_a_flag_with_the_dataclass_default_and_choices() -> None:
    actions = _actions()
    hints = typing.get_type_hints(RunConfig)
    for f in dataclasses.fields(RunConfig):
        action = actions[f.name]
        assert action.option_strings == [flag_of(f.name)]
        if f.default is dataclasses.MISSING:
            assert action.required
        else:
            assert action.default == f.default and not action.required
        if typing.get_origin(hints[f.name]) is typing.Literal:
            assert tuple(action.choices) == typing.get_args(hints[f.name])


def test_defaults_parse_to_the_dataclass_defaults() -> None:
    config = from_args(_parser().parse_args(REQUIRED))
    assert config == RunConfig(inputs=("a.parquet", "b.jsonl"), tokenizer="tok.json", output="out")


def test_every_flag_reaches_its_field() -> None:
    argv = [*REQUIRED, "--text-column", "body", "--id-column", "key", "--block-size", "512"]
    argv += ["--packing", "concat", "--validation-fraction", "0.1", "--dtype", "uint32"]
    argv += ["--unit-bytes", "1000", "--batch-blocks", "64", "--compression-level", "9"]
    argv += ["--on-bad-file", "skip"]
    config = from_args(_parser().parse_args(argv))
    assert config.to_dict() == {
        "inputs": ["a.parquet", "b.jsonl"],
        "tokenizer": "tok.json",
        "output": "out",
        "text_column": "body",
        "id_column": "key",
        "block_size": 512,
        "packing": "concat",
        "validation_fraction": 0.1,
        "dtype": "uint32",
        "unit_bytes": 1000,
        "batch_blocks": 64,
        "compression_level": 9,
        "on_bad_file": "skip",
    }


# The messages as they read before the parser and checks were built from the dataclass.
@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            {"inputs": ()},
            "--input: expected at least one parquet/jsonl path, found none; pass --input with "
            "files, folders, globs or s3:// URIs",
        ),
        (
            {"block_size": 4},
            "--block-size: expected 8 to 65536, found 4; pick a block size in that range (128 is "
            "the default)",
        ),
        (
            {"packing": "both"},
            "--packing: expected framed or concat, found 'both'; use framed (RoBERTa-style "
            "blocks) or concat (the group_texts stream)",
        ),
        (
            {"validation_fraction": 1.0},
            "--validation-fraction: expected a number in [0, 1), found 1.0; use e.g. 0.05 for "
            "5 % of documents",
        ),
        (
            {"dtype": "int8"},
            "--dtype: expected auto, uint16 or uint32, found 'int8'; auto picks the smallest "
            "that holds the vocabulary",
        ),
        (
            {"unit_bytes": 0},
            "--unit-bytes: expected a positive size, found 0; the default is 33554432 (32 MiB "
            "of text per work unit)",
        ),
        (
            {"batch_blocks": 0},
            "--batch-blocks: expected 1 to 1000000, found 0; the default 2048 keeps record "
            "batches ~0.5 MB for the trainer's random access",
        ),
        (
            {"compression_level": 23},
            "--compression-level: expected a zstd level 1 to 22, found 23; 3 is the default (9 "
            "is ~5 % smaller and ~4 % slower)",
        ),
        (
            {"on_bad_file": "ignore"},
            "--on-bad-file: expected fail or skip, found 'ignore'; use skip to leave unreadable "
            "files out and list them in the manifest",
        ),
    ],
)
def test_a_bad_value_is_refused_with_one_line(change: dict, message: str) -> None:
    values = {"inputs": ("a.parquet",), "tokenizer": "t", "output": "o", **change}
    with pytest.raises(UsageError, match=f"^{re.escape(message)}$"):
        RunConfig(**values)


def test_the_cli_prints_the_same_line_and_exits_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["run", *REQUIRED, "--block-size", "70000"]) == 2
    err = capsys.readouterr().err
    assert err == (
        "error: --block-size: expected 8 to 65536, found 70000; pick a block size in that range "
        "(128 is the default)\n"
    )


def test_a_choice_outside_the_literal_is_refused_by_the_parser() -> None:
    with pytest.raises(argparse.ArgumentError, match=r"invalid choice: 'both'"):
        _parser().parse_args([*REQUIRED, "--packing", "both"])
