"""Sidecars and the manifest: the token ledger, per-shard records, and the commit marker.

A sidecar `OUT/<split>/shard-NNNNN.json` sits beside each shard: its checksum and counts, the
work unit it came from, that unit's ledger for the split, and the unit's leftover tokens
(< one block) that the final stitching step packs. `OUT/manifest.json` is written last and
atomically; a folder without it is not a dataset. Layouts: schemas/sidecar.schema.json and
schemas/manifest.schema.json.

The ledger balances exactly, per record and summed per split:
  documents read  = documents packed + skipped (by reason)
  document tokens + special tokens + carried in = block tokens + carried out + dropped
Units carry their leftover out; the tail record carries them all in, so the sums cancel.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any

from pipeline import FORMAT_VERSION, storage
from pipeline.errors import DataError, brief

SKIP_REASONS = ("null_text", "empty_text", "invalid_utf8")
MANIFEST_NAME = "manifest.json"


@dataclass(kw_only=True)
class Ledger:
    num_documents: int = 0
    num_documents_packed: int = 0
    skipped: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SKIP_REASONS, 0))
    num_document_tokens: int = 0
    num_special_tokens: int = 0
    num_carried_in: int = 0
    num_block_tokens: int = 0
    num_carried_out: int = 0
    num_dropped_tokens: int = 0
    # Documents whose start fell in the split's dropped remainder: packed, yet in no block.
    num_documents_dropped: int = 0

    def add(self, other: Ledger) -> None:
        for f in dataclasses.fields(self):
            if f.name == "skipped":
                for reason, n in other.skipped.items():
                    self.skipped[reason] = self.skipped.get(reason, 0) + n
            else:
                setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def problems(self) -> list[str]:
        """What does not balance, in words (empty when the ledger is right)."""
        out = []
        skipped = sum(self.skipped.values())
        if self.num_documents != self.num_documents_packed + skipped:
            out.append(
                f"documents read {self.num_documents} != packed {self.num_documents_packed}"
                f" + skipped {skipped}"
            )
        tokens_in = self.num_document_tokens + self.num_special_tokens + self.num_carried_in
        tokens_out = self.num_block_tokens + self.num_carried_out + self.num_dropped_tokens
        if tokens_in != tokens_out:
            out.append(
                f"tokens in {tokens_in} (document {self.num_document_tokens} + special "
                f"{self.num_special_tokens} + carried in {self.num_carried_in}) != tokens out "
                f"{tokens_out} (blocks {self.num_block_tokens} + carried out "
                f"{self.num_carried_out} + dropped {self.num_dropped_tokens})"
            )
        return out

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Ledger:
        return cls(**data)


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


def shard_name(index: int) -> str:
    return f"shard-{index:05d}.arrow"


def sidecar_uri(output: str, split: str, index: int) -> str:
    return storage.join(output, split, shard_name(index).removesuffix(".arrow") + ".json")


def shard_uri(output: str, split: str, index: int) -> str:
    return storage.join(output, split, shard_name(index))


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
