"""schemas/ is the single source of truth: the code writes exactly what it describes."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pyarrow as pa
import pytest
from referencing import Registry, Resource

from pipeline.core.ledger import SKIP_REASONS, Ledger
from pipeline.format.manifest import load_manifest
from pipeline.format.records import read_json
from pipeline.format.shards import METADATA_KEYS, ShardMeta, ShardReader, shard_schema
from tests.conftest import REPO

SCHEMAS = REPO / "schemas"


def _load(name: str) -> dict:
    return json.loads((SCHEMAS / name).read_text())


@pytest.fixture(scope="module")
def registry() -> Registry:
    resources = [
        (name, Resource.from_contents(_load(name)))
        for name in ("sidecar.schema.json", "manifest.schema.json")
    ]
    return Registry().with_resources(resources)


def test_shard_schema_matches_code() -> None:
    spec = _load("shard.json")
    meta = ShardMeta(
        block_size=128,
        dtype="uint16",
        packing="framed",
        split="train",
        tokenizer_sha256="0" * 64,
        vocab_size=30522,
        special_ids={"cls": 101},
    )
    schema = shard_schema(meta)
    assert [c["name"] for c in spec["columns"]] == schema.names
    assert schema.field("input_ids").type == pa.list_(pa.uint16(), 128)
    assert schema.field("doc_starts").type == pa.list_(pa.uint16())
    assert all(not schema.field(c["name"]).nullable for c in spec["columns"])
    assert sorted(spec["metadata"]) == sorted(METADATA_KEYS)
    assert sorted(k.decode() for k in schema.metadata) == sorted(METADATA_KEYS)
    assert spec["format_version"] == meta.format_version


def test_real_output_matches_schemas(bert_output: Path, registry: Registry) -> None:
    written = read_json(str(bert_output / "manifest.json"))
    validator = jsonschema.Draft202012Validator(_load("manifest.schema.json"), registry=registry)
    validator.validate(written)
    manifest = load_manifest(str(bert_output))
    assert manifest.to_dict() == written  # the typed record reads and writes the same JSON
    sidecar_validator = jsonschema.Draft202012Validator(_load("sidecar.schema.json"))
    cars = sorted(bert_output.glob("*/shard-*.json"))
    assert len(cars) >= 4
    for car in cars:
        sidecar_validator.validate(read_json(str(car)))
    reader = ShardReader(str(bert_output / manifest.splits["train"].shards[0].file))
    assert reader.meta.tokenizer_sha256 == manifest.tokenizer.sha256
    assert manifest.splits["train"].num_blocks > 0


def test_ledger_schema_lists_every_field() -> None:
    ledger_schema = _load("sidecar.schema.json")["$defs"]["ledger"]
    assert sorted(ledger_schema["required"]) == sorted(Ledger().to_dict())
    assert sorted(ledger_schema["properties"]["skipped"]["required"]) == sorted(SKIP_REASONS)


def test_schema_rejects_a_wrong_manifest(bert_output: Path, registry: Registry) -> None:
    manifest = load_manifest(str(bert_output)).to_dict()
    manifest["splits"]["train"]["ledger"]["surprise"] = 1
    validator = jsonschema.Draft202012Validator(_load("manifest.schema.json"), registry=registry)
    with pytest.raises(jsonschema.ValidationError, match="surprise"):
        validator.validate(manifest)
