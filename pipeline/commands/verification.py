"""`pipeline verify OUT`: check every file of an output against its manifest.

The full check re-reads every shard: its size and sha256, its schema metadata against the
manifest's config and tokenizer, its block and document-start counts against the manifest and
its sidecar, and every token id against the vocabulary; then the per-split ledgers, the files
the manifest does not list, and the canonical sha256 of OUT/tokenizer.json. `full=False` is
what a trainer runs on open: sizes and metadata (the Arrow footer) only, no hashing. OUT may
be an s3:// URI (all access goes through `pipeline.format.storage`); shards are read batch by batch,
a remote one held in memory, one at a time.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pyarrow as pa
from tokenizers import Tokenizer

from pipeline import FORMAT_VERSION
from pipeline.core.ledger import Ledger
from pipeline.core.split import SPLITS
from pipeline.errors import DataError, brief
from pipeline.format import storage
from pipeline.format.manifest import Sidecar, load_manifest, read_json
from pipeline.format.paths import MANIFEST_NAME, TOKENIZER_FILE
from pipeline.format.shards import ShardMeta, ShardReader, shard_schema
from pipeline.ingest.tokenization import describe_tokenizer

REBUILD = "rerun the same `pipeline run` command to rebuild it"
REWRITE = "rerun the same `pipeline run` command to rewrite the manifest"


@dataclass
class Verification:
    output: str
    full: bool
    problems: list[str] = field(default_factory=list)
    num_shards: int = 0
    num_blocks: int = 0
    bytes_read: int = 0


def verify_output(output: str, full: bool = True) -> list[str]:
    """Problems found in OUT, one sentence each; empty when OUT matches its manifest.

    Raises DataError when OUT has no readable manifest (there is nothing to verify against).
    """
    return check_output(output, full).problems


def check_output(output: str, full: bool = True) -> Verification:
    manifest = load_manifest(output)
    with manifest_layout(output):
        return _check(output, manifest, full)


@contextmanager
def manifest_layout(output: str) -> Iterator[None]:
    """Turns a manifest with missing or mistyped fields into a DataError naming it."""
    try:
        yield
    except (KeyError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{storage.join(output, MANIFEST_NAME)}: expected the manifest layout of format "
            f"{FORMAT_VERSION}, found a damaged one ({type(exc).__name__}: {exc}); {REWRITE}"
        ) from exc


def _check(output: str, manifest: dict[str, Any], full: bool) -> Verification:
    result = Verification(output=output, full=full)
    result.problems += _tokenizer_problems(output, manifest["tokenizer"], full)
    listed: set[str] = set()
    for split, entry in manifest["splits"].items():
        for problem in ledger_problems(entry, int(manifest["config"]["block_size"])):
            result.problems.append(f"{split}: {MANIFEST_NAME} {problem}; {REWRITE}")
        expected = expected_meta(manifest, split)
        car_ledger = Ledger()
        for shard in entry["shards"]:
            uri = storage.join(output, *shard["file"].split("/"))
            car_uri = uri.removesuffix(".arrow") + ".json"
            listed |= {storage.normalize(uri), storage.normalize(car_uri)}
            result.num_shards += 1
            result.problems += _shard_problems(uri, shard, expected, full, result)
            if full:
                result.problems += _sidecar_problems(car_uri, shard, split, car_ledger)
        if full and car_ledger.to_dict() != Ledger.from_dict(entry["ledger"]).to_dict():
            result.problems.append(
                f"{split}: the sidecars' ledgers do not add up to the manifest's; one of them "
                f"was edited: delete the edited sidecars, then {REWRITE}"
            )
    result.problems += _extra_files(output, set(SPLITS) | set(manifest["splits"]), listed)
    return result


def expected_meta(manifest: dict[str, Any], split: str) -> ShardMeta:
    tok = manifest["tokenizer"]
    return ShardMeta(
        format_version=manifest["format_version"],
        block_size=int(manifest["config"]["block_size"]),
        dtype=tok["dtype"],
        packing=manifest["config"]["packing"],
        split=split,
        tokenizer_sha256=tok["sha256"],
        vocab_size=int(tok["vocab_size"]),
        special_ids=tok["special_ids"],
    )


def ledger_problems(entry: dict[str, Any], block_size: int) -> list[str]:
    """A split's manifest record against itself: ledger balance, blocks, tokens and bytes."""
    ledger = Ledger.from_dict(entry["ledger"])
    out = [f"ledger: {p}" for p in ledger.problems()]
    if ledger.num_block_tokens != entry["num_blocks"] * block_size:
        out.append(
            f"ledger block tokens {ledger.num_block_tokens:,} != blocks {entry['num_blocks']:,}"
            f" x block_size {block_size}"
        )
    if entry["num_tokens"] != ledger.num_block_tokens:
        out.append(f"tokens {entry['num_tokens']:,} != ledger block tokens")
    for key in ("num_blocks", "num_bytes"):
        total = sum(int(s[key]) for s in entry["shards"])
        if entry[key] != total:
            out.append(f"{key} {entry[key]:,} != {total:,}, the sum over its shards")
    return out


def _shard_problems(
    uri: str, shard: dict[str, Any], expected: ShardMeta, full: bool, result: Verification
) -> list[str]:
    name = shard["file"]
    if not storage.exists(uri):
        return [f"{name}: missing (the manifest lists it); {REBUILD}"]
    size = storage.size_of(uri)
    if size != shard["num_bytes"]:
        what = "truncated" if size < shard["num_bytes"] else "size differs"
        return [f"{name}: {what}: expected {shard['num_bytes']:,} bytes, found {size:,}; {REBUILD}"]
    out = []
    try:
        data = storage.read_bytes(uri) if full and storage.is_remote(uri) else None
        if full:
            digest = (
                hashlib.sha256(data).hexdigest() if data is not None else storage.sha256_of(uri)
            )
            result.bytes_read += size
            if digest != shard["sha256"]:
                out.append(
                    f"{name}: altered: sha256 {digest[:16]}… differs from the manifest's "
                    f"{shard['sha256'][:16]}…; {REBUILD}"
                )
        meta = _meta_problems(name, _read_schema(uri, data), expected)
        out += meta
        if full and not meta:
            out += _content_problems(name, ShardReader(uri, data), shard, expected, result)
    except (ValueError, pa.ArrowException, OSError) as exc:  # DataError is a ValueError
        out.append(f"{name}: does not read as a shard ({brief(exc, 160)}); {REBUILD}")
    return out


def _read_schema(uri: str, data: bytes | None) -> pa.Schema:
    """The schema from the Arrow file footer alone (a few KB, also on an object store)."""
    if data is not None:
        return pa.ipc.open_file(pa.BufferReader(data)).schema
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pa.ipc.open_file(f).schema


def _meta_problems(name: str, schema: pa.Schema, expected: ShardMeta) -> list[str]:
    meta = ShardMeta.from_schema(schema, name)
    out = [
        f"{name}: metadata {key} is {getattr(meta, key)!r}, the manifest says "
        f"{getattr(expected, key)!r}; {REBUILD}"
        for key in ShardMeta.__dataclass_fields__
        if getattr(meta, key) != getattr(expected, key)
    ]
    if not schema.remove_metadata().equals(shard_schema(expected).remove_metadata()):
        out.append(f"{name}: columns {schema.types} differ from the format's; {REBUILD}")
    return out


def _content_problems(
    name: str, reader: ShardReader, shard: dict[str, Any], expected: ShardMeta, result: Verification
) -> list[str]:
    blocks = starts = 0
    max_id = max_start = -1
    for b in range(reader.num_batches):
        batch = reader.read_batch(b)
        blocks += batch.num_blocks
        starts += int(batch.start_values.size)
        if batch.num_blocks:
            max_id = max(max_id, int(batch.tokens.max()))
        if batch.start_values.size:
            max_start = max(max_start, int(batch.start_values.max()))
    result.num_blocks += blocks
    out = []
    if blocks != shard["num_blocks"] or starts != shard["num_doc_starts"]:
        out.append(
            f"{name}: holds {blocks:,} blocks and {starts:,} document starts, the manifest says "
            f"{shard['num_blocks']:,} and {shard['num_doc_starts']:,}; {REBUILD}"
        )
    if max_id >= expected.vocab_size:
        out.append(
            f"{name}: token id {max_id:,} >= vocabulary size {expected.vocab_size:,}; {REBUILD}"
        )
    if max_start >= expected.block_size:
        out.append(
            f"{name}: document start {max_start:,} >= block_size {expected.block_size}; {REBUILD}"
        )
    return out


def _sidecar_problems(uri: str, shard: dict[str, Any], split: str, total: Ledger) -> list[str]:
    name = shard["file"].removesuffix(".arrow") + ".json"
    fix = "delete it and rerun the same `pipeline run` command"
    try:
        car = Sidecar.from_dict(read_json(uri))
    except DataError:
        return [f"{name}: missing or not JSON (the sidecar of {shard['file']}); {fix}"]
    except (KeyError, TypeError) as exc:
        return [f"{name}: not a sidecar of this format ({exc!r}); {fix}"]
    total.add(car.ledger)
    found = {
        "split": car.split,
        "file": f"{split}/{car.shard}",
        **{k: getattr(car, k) for k in ("sha256", "num_bytes", "num_blocks", "num_doc_starts")},
    }
    wanted = {"split": split, **shard}
    return [
        f"{name}: {key} is {found[key]!r}, the manifest says {wanted[key]!r}; {fix}"
        for key in found
        if found[key] != wanted[key]
    ]


def _tokenizer_problems(output: str, record: dict[str, Any], full: bool) -> list[str]:
    uri = storage.join(output, TOKENIZER_FILE)
    fix = "delete it and rerun the same `pipeline run` command to rewrite it"
    if not storage.exists(uri):
        return [f"{TOKENIZER_FILE}: missing; {fix}"]
    if not full:
        return []
    try:
        info = describe_tokenizer(Tokenizer.from_str(storage.read_bytes(uri).decode()))
    except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
        return [f"{TOKENIZER_FILE}: does not load ({brief(exc, 120)}); {fix}"]
    out = []
    if info.sha256 != record["sha256"]:
        out.append(
            f"{TOKENIZER_FILE}: canonical sha256 {info.sha256[:16]}… differs from the "
            f"manifest's {record['sha256'][:16]}…; {fix}"
        )
    if info.vocab_size != record["vocab_size"]:
        out.append(
            f"{TOKENIZER_FILE}: vocabulary {info.vocab_size:,}, the manifest says "
            f"{record['vocab_size']:,}; {fix}"
        )
    return out


def _extra_files(output: str, folders: set[str], listed: set[str]) -> list[str]:
    base = storage.normalize(output)
    return [
        f"{uri[len(base) :].lstrip('/')}: extra file the manifest does not list; remove it"
        for folder in sorted(folders)
        for uri in storage.list_files(storage.join(output, folder), recursive=True)
        if storage.normalize(uri) not in listed
    ]


def main(args: argparse.Namespace) -> int:
    try:
        result = check_output(args.output, full=True)
    except DataError as exc:  # no manifest: report it like any other problem
        result = Verification(output=args.output, full=True, problems=[str(exc)])
    ok = not result.problems
    if args.json:
        print(json.dumps({"ok": ok, **vars(result)}, indent=1, ensure_ascii=False))
        return 0 if ok else 1
    for problem in result.problems:
        print(problem)
    verdict = "ok" if ok else f"FAILED, {len(result.problems)} problems"
    print(
        f"verify {args.output}: {verdict}; {result.num_shards} shards, {result.num_blocks:,} "
        f"blocks, {result.bytes_read:,} bytes re-read and hashed"
        + ("; all match the manifest" if ok else "")
    )
    return 0 if ok else 1
