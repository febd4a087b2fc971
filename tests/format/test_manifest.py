"""The typed manifest: it reads and writes manifest.json unchanged, and a damaged file fails
with one line naming the file, the field, what was expected and what was found."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest

from pipeline.core.ledger import Ledger
from pipeline.errors import DataError
from pipeline.format.manifest import (
    InputRecord,
    Manifest,
    ShardRecord,
    SkippedFile,
    SplitRecord,
    TokenizerRecord,
    load_manifest,
)
from pipeline.format.records import write_json_atomic

FIX = "rerun the same `pipeline run` command to rewrite the manifest"


def _manifest() -> Manifest:
    """A small manifest by hand (no ../shared): two splits, one shard each."""

    def split(name: str, blocks: int) -> SplitRecord:
        ledger = Ledger(num_documents=3, num_documents_packed=3, num_block_tokens=blocks * 8)
        shard = ShardRecord(
            file=f"{name}/shard-00000.arrow",
            sha256="ab" * 32,
            num_bytes=100 + blocks,
            num_blocks=blocks,
            num_doc_starts=3,
        )
        return SplitRecord(
            num_blocks=blocks,
            num_tokens=blocks * 8,
            num_bytes=100 + blocks,
            ledger=ledger,
            shards=(shard,),
        )

    return Manifest(
        format_version=1,
        pipeline_version="0.1.0",
        config={"block_size": 8, "batch_blocks": 2048, "packing": "framed", "dtype": "auto"},
        tokenizer=TokenizerRecord(
            file="tokenizer.json",
            sha256="cd" * 32,
            vocab_size=300,
            dtype="uint16",
            prefix_ids=(1,),
            suffix_ids=(2,),
            special_ids={"cls": 1, "sep": 2, "pad": 0, "mask": 4, "unk": None},
            all_special_ids=(0, 1, 2, 4),
        ),
        inputs=(InputRecord(path="/in/a.jsonl", num_bytes=1234, num_rows=None),),
        skipped_files=(SkippedFile(path="/in/b.parquet", reason="no footer"),),
        num_units=1,
        splits={"train": split("train", 5), "validation": split("validation", 1)},
    )


def test_round_trip_keeps_every_key_and_value(tmp_path: Path) -> None:
    manifest = _manifest()
    write_json_atomic(str(tmp_path / "manifest.json"), manifest.to_dict())
    loaded = load_manifest(str(tmp_path))
    assert loaded == manifest
    assert loaded.to_dict() == manifest.to_dict() == json.loads(json.dumps(manifest.to_dict()))
    assert (loaded.block_size, loaded.batch_blocks, loaded.packing) == (8, 2048, "framed")
    assert loaded.num_blocks == 6
    assert loaded.splits["train"].shards[0].sidecar_file == "train/shard-00000.json"


def _damaged(tmp_path: Path, change: Any) -> Path:
    data = _manifest().to_dict()
    change(data)
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    return tmp_path


def _drop(*path: str | int) -> Any:
    def change(data: Any) -> None:
        for key in path[:-1]:
            data = data[key]
        del data[path[-1]]

    return change


def _set(value: object, *path: str | int) -> Any:
    def change(data: Any) -> None:
        for key in path[:-1]:
            data = data[key]
        data[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "expected", "found"),
    [
        (_drop("splits", "train", "ledger"), "splits.train.ledger to be an object", "it missing"),
        (_drop("tokenizer"), "tokenizer to be an object", "it missing"),
        (_set(None, "num_units"), "num_units to be an integer", "null"),
        (_set([], "splits"), "splits to be an object", "a list []"),
        (_set("7", "config", "block_size"), "config.block_size to be an integer", 'a string "7"'),
        (_set(True, "num_units"), "num_units to be an integer", "a boolean true"),
        (
            _set("int8", "tokenizer", "dtype"),
            "tokenizer.dtype to be 'uint16' or 'uint32'",
            'a string "int8"',
        ),
        (
            _set("both", "config", "packing"),
            "config.packing to be 'framed' or 'concat'",
            'a string "both"',
        ),
        (
            _set(None, "splits", "validation", "shards", 0, "sha256"),
            "splits.validation.shards[0].sha256 to be a string",
            "null",
        ),
        (
            _set({}, "splits", "train", "shards"),
            "splits.train.shards to be a list of objects",
            "an object {}",
        ),
        (
            _set([1, None], "tokenizer", "prefix_ids"),
            "tokenizer.prefix_ids to be a list of integers",
            "a list [1, null]",
        ),
        (
            _set("x", "splits", "train", "ledger", "skipped", "null_text"),
            "splits.train.ledger.skipped.null_text to be an integer",
            'a string "x"',
        ),
        (
            _set(1.5, "inputs", 0, "num_rows"),
            "inputs[0].num_rows to be an integer or null",
            "a number 1.5",
        ),
    ],
)
def test_each_kind_of_damage_is_one_line(
    tmp_path: Path, change: Any, expected: str, found: str
) -> None:
    out = _damaged(tmp_path, change)
    message = f"{out / 'manifest.json'}: expected {expected}, found {found}; {FIX}"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        load_manifest(str(out))


@pytest.mark.parametrize(
    ("text", "found"),
    [
        ("null", "found null"),
        ("[]", "found a list []"),
        ('"manifest"', 'found a string "manifest"'),
    ],
)
def test_a_manifest_that_is_not_an_object_is_refused(tmp_path: Path, text: str, found: str) -> None:
    (tmp_path / "manifest.json").write_text(text)
    message = f"{tmp_path / 'manifest.json'}: expected the file to be an object, {found}; {FIX}"
    with pytest.raises(DataError, match=f"^{re.escape(message)}$"):
        load_manifest(str(tmp_path))


def test_truncated_json_is_refused(tmp_path: Path) -> None:
    text = json.dumps(_manifest().to_dict())
    (tmp_path / "manifest.json").write_text(text[: len(text) // 2])
    with pytest.raises(
        DataError,
        match=r"manifest\.json: expected JSON, found a damaged file \(.*\); rerun the command",
    ) as caught:
        load_manifest(str(tmp_path))
    assert "\n" not in str(caught.value)


def test_another_format_version_is_named(tmp_path: Path) -> None:
    out = _damaged(tmp_path, _set(2, "format_version"))
    with pytest.raises(DataError, match="expected format_version 1, found 2; rerun `pipeline run`"):
        load_manifest(str(out))


def test_a_missing_manifest_is_an_unfinished_run(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected the manifest of a finished run, found none"):
        load_manifest(str(tmp_path))
