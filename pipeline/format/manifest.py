"""Sidecars and the manifest: the token ledger, per-shard records, and the commit marker.

A sidecar `OUT/<split>/shard-NNNNN.json` sits beside each shard: its checksum and counts, the
work unit it came from, that unit's ledger for the split, and the unit's leftover tokens
(< one block) that the final stitching step packs. `OUT/manifest.json` is written last and
atomically; a folder without it is not a dataset. Layouts: schemas/sidecar.schema.json and
schemas/manifest.schema.json.

Each sidecar carries its unit's ledger (core/ledger.py); the manifest sums them per split.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import Any

from pipeline import FORMAT_VERSION
from pipeline.core.ledger import Ledger
from pipeline.errors import DataError, brief
from pipeline.format import storage
from pipeline.format.paths import MANIFEST_NAME, sidecar_uri


@dataclass(frozen=True, kw_only=True)
class Sidecar:
    split: str
    shard: str  # file name inside OUT/<split>/
    sha256: str
    num_bytes: int
    num_blocks: int
    num_doc_starts: int
    unit: dict[str, Any]
    run_digest: str
    ledger: Ledger
    leftover_tokens: list[int]
    leftover_starts: list[int]

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["ledger"] = self.ledger.to_dict()
        return {"format_version": FORMAT_VERSION, **data}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Sidecar:
        data = {k: v for k, v in data.items() if k != "format_version"}
        data["ledger"] = Ledger.from_dict(data["ledger"])
        return cls(**data)


def write_json_atomic(uri: str, data: dict[str, Any]) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    storage.write_bytes_atomic(uri, text.encode())


def read_json(uri: str) -> dict[str, Any]:
    try:
        return json.loads(storage.read_bytes(uri))
    except (OSError, FileNotFoundError) as exc:
        raise DataError(
            f"{uri}: expected a JSON file, found none ({brief(exc)}); rerun the command that "
            "writes it (`pipeline run` resumes)"
        ) from exc
    except json.JSONDecodeError as exc:
        raise DataError(
            f"{uri}: expected JSON, found a damaged file ({brief(exc)}); rerun the command to "
            "rewrite it"
        ) from exc


def write_sidecar(output: str, index: int, sidecar: Sidecar) -> None:
    write_json_atomic(sidecar_uri(output, sidecar.split, index), sidecar.to_dict())


def read_sidecar(output: str, split: str, index: int) -> Sidecar | None:
    uri = sidecar_uri(output, split, index)
    if not storage.exists(uri):
        return None
    try:
        return Sidecar.from_dict(read_json(uri))
    except (DataError, KeyError, TypeError):
        return None


def build_manifest(
    *,
    config: dict[str, Any],
    tokenizer: dict[str, Any],
    inputs: list[dict[str, Any]],
    skipped_files: list[dict[str, str]],
    num_units: int,
    sidecars: dict[str, list[Sidecar]],
    pipeline_version: str,
) -> dict[str, Any]:
    splits = {}
    for split, cars in sidecars.items():
        ledger = Ledger()
        for car in cars:
            ledger.add(car.ledger)
        splits[split] = {
            "num_blocks": sum(c.num_blocks for c in cars),
            "num_tokens": ledger.num_block_tokens,
            "num_bytes": sum(c.num_bytes for c in cars),
            "ledger": ledger.to_dict(),
            "shards": [
                {
                    "file": f"{split}/{c.shard}",
                    "sha256": c.sha256,
                    "num_bytes": c.num_bytes,
                    "num_blocks": c.num_blocks,
                    "num_doc_starts": c.num_doc_starts,
                }
                for c in cars
            ],
        }
    return {
        "format_version": FORMAT_VERSION,
        "pipeline_version": pipeline_version,
        "config": config,
        "tokenizer": tokenizer,
        "inputs": inputs,
        "skipped_files": skipped_files,
        "num_units": num_units,
        "splits": splits,
    }


def load_manifest(output: str) -> dict[str, Any]:
    uri = storage.join(output, MANIFEST_NAME)
    if not storage.exists(uri):
        raise DataError(
            f"{uri}: expected the manifest of a finished run, found none; the run did not "
            "finish (rerun the same `pipeline run` command to resume) or this is not an output"
        )
    manifest = read_json(uri)
    if manifest.get("format_version") != FORMAT_VERSION:
        raise DataError(
            f"{uri}: expected format_version {FORMAT_VERSION}, found "
            f"{manifest.get('format_version')}; rerun `pipeline run` with this version"
        )
    return manifest
