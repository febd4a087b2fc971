"""The run's inputs around the work: their paths, their descriptions before units are planned,
and what the manifest says of them afterwards (rows read, files left out, whether any usable
text was found). Kept out of runner.py, which sequences the run.
"""

from __future__ import annotations

import json
import os
from typing import Any

from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.format.manifest import Manifest
from pipeline.format.sidecars import Sidecar
from pipeline.ingest.sources import EmptyInputError, describe_input
from pipeline.ingest.units import InputFile, WorkUnit
from pipeline.run.config import RunConfig


def with_absolute_paths(config: RunConfig) -> RunConfig:
    """Resolved paths (symlinks and `..` too), so that the run's identity, resume and the
    manifest do not depend on the working directory or on how a path was spelled; an input's
    last name stays as given (a link in a Hugging Face cache names a blob called by its hash)."""
    return RunConfig.from_dict(
        {
            **config.to_dict(),
            "inputs": [_input_path(i) for i in config.inputs],
            "tokenizer": storage.normalize(config.tokenizer),
            "output": storage.normalize(config.output),
        }
    )


def _input_path(item: str) -> str:
    if storage.is_remote(storage.normalize(item)):
        return storage.normalize(item)
    path = os.path.abspath(os.path.expanduser(item.removeprefix("file://")))
    return os.path.join(os.path.realpath(os.path.dirname(path)), os.path.basename(path))


def count_rows(
    inputs: list[dict[str, Any]], units: list[WorkUnit], sidecars: dict[str, list[Sidecar]]
) -> list[dict[str, Any]]:
    """Parquet row counts come from the footers; JSON lines files' from reading them."""
    read: dict[str, int] = {}
    for unit, *cars in zip(units, *sidecars.values(), strict=False):
        read[unit.path] = read.get(unit.path, 0) + sum(c.ledger.num_documents for c in cars)
    return [
        {**entry, "num_rows": read.get(entry["path"], 0)} if entry["num_rows"] is None else entry
        for entry in inputs
    ]


def skipped_units(sidecars: dict[str, list[Sidecar]]) -> list[dict[str, str]]:
    """The files --on-bad-file skip left out of units, each with its own reason (the other
    files of a unit of several files were read)."""
    skipped: list[dict[str, str]] = []
    for car in sidecars["train"]:
        if "error" in car.unit:
            skipped.append({"path": car.unit["path"], "reason": car.unit["error"]})
        skipped += [{"path": s["path"], "reason": s["reason"]} for s in car.unit.get("skipped", [])]
    return skipped


def check_real_work(config: RunConfig, manifest: Manifest) -> None:
    """A run that packed no document at all is a mistake (wrong column?), not a dataset; nor is
    one whose train split holds no block (a block size larger than the corpus)."""
    ledgers = [split.ledger for split in manifest.splits.values()]
    if sum(led.num_documents_packed for led in ledgers):
        train = manifest.splits["train"]
        if train.num_blocks == 0:
            tokens = train.ledger.num_document_tokens + train.ledger.num_special_tokens
            raise DataError(
                f"--block-size {config.block_size}: expected at least one train block, found "
                f"none (the train split has {tokens:,} tokens in all, fewer than one block); "
                "lower --block-size (with --overwrite: this attempt holds the folder) or add "
                "input. No manifest was published"
            )
        return
    read = sum(led.num_documents for led in ledgers)
    skipped: dict[str, int] = {}
    for led in ledgers:
        for reason, n in led.skipped.items():
            skipped[reason] = skipped.get(reason, 0) + n
    left_out = len(manifest.skipped_files)
    unread = f", and {left_out} files left out as unreadable" if left_out else ""
    raise DataError(
        f"--input {' '.join(config.inputs)}: expected texts in column {config.text_column!r}, "
        f"found none usable in {read:,} rows (skipped: {skipped}){unread}; check --text-column"
        + (" and the files left out (run without --on-bad-file skip to see why)" if unread else "")
    )


def describe_inputs(paths: list[str], config: RunConfig) -> tuple[list[InputFile], list[dict]]:
    files, skipped = [], []
    for path in paths:
        try:
            files.append(describe_input(path, config.text_column, config.id_column))
        except EmptyInputError as exc:
            skipped.append({"path": path, "reason": str(exc)})
        except DataError as exc:
            if config.on_bad_file == "fail":
                raise
            skipped.append({"path": path, "reason": str(exc)})
    if not files:
        raise DataError(
            f"--input: expected at least one readable file, found none of {len(paths)} "
            f"usable (skipped: {json.dumps(skipped)[:300]})"
        )
    return files, skipped
