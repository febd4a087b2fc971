"""The sidecar format: `OUT/<split>/shard-NNNNN.json` beside each shard.

A sidecar holds its shard's checksum and counts, the work unit it came from, that unit's ledger
for the split, and the unit's leftover tokens (< one block) that the final stitching step packs.
A unit is done when both its sidecars carry the run's digest; the manifest sums their ledgers.
Layout: schemas/sidecar.schema.json.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from pipeline import FORMAT_VERSION
from pipeline.core.ledger import Ledger
from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.format.paths import sidecar_uri
from pipeline.format.records import read_json, write_json_atomic


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
    def from_dict(cls, data: Any) -> Sidecar:
        """Raises DataError when data is not an object or its unit or ledger is not one (a
        truncated or hand-edited sidecar: `null`, `[]`); KeyError or TypeError when a field is
        missing or unexpected."""
        for what, value in (("sidecar", data), ("unit", _get(data, "unit")),
                            ("ledger", _get(data, "ledger"))):  # fmt: skip
            if not isinstance(value, dict):
                raise DataError(
                    f"expected a JSON object as the {what}, found {type(value).__name__}"
                )
        data = {k: v for k, v in data.items() if k != "format_version"}
        data["ledger"] = Ledger.from_dict(data["ledger"])
        return cls(**data)


def _get(data: Any, key: str) -> Any:
    return data.get(key, {}) if isinstance(data, dict) else {}


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
