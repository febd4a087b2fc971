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
import json
from dataclasses import dataclass, field

import pyarrow as pa
from tokenizers import Tokenizer

from pipeline.core.ledger import Ledger
from pipeline.core.split import SPLITS
from pipeline.errors import DataError, brief
from pipeline.format import storage
from pipeline.format.integrity import check_shard, expected_meta
from pipeline.format.manifest import (
    REWRITE,
    Manifest,
    ShardRecord,
    SplitRecord,
    TokenizerRecord,
    load_manifest,
)
from pipeline.format.paths import MANIFEST_NAME, TOKENIZER_FILE
from pipeline.format.records import read_json
from pipeline.format.shards import ShardMeta, ShardReader
from pipeline.format.sidecars import Sidecar
from pipeline.ingest.tokenization import describe_tokenizer

REBUILD = "rerun the same `pipeline run` command to rebuild it"


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
    return _check(output, load_manifest(output), full)


def _check(output: str, manifest: Manifest, full: bool) -> Verification:
    result = Verification(output=output, full=full)
    result.problems += _tokenizer_problems(output, manifest.tokenizer, full)
    listed: set[str] = set()
    for split, entry in manifest.splits.items():
        for problem in ledger_problems(entry, manifest.block_size):
            result.problems.append(f"{split}: {MANIFEST_NAME} {problem}; {REWRITE}")
        expected = expected_meta(manifest, split)
        car_ledger = Ledger()
        for shard in entry.shards:
            uri, car_uri = shard.uri(output), storage.join(output, shard.sidecar_file)
            listed |= {storage.normalize(uri), storage.normalize(car_uri)}
            result.num_shards += 1
            result.problems += _shard_problems(uri, shard, expected, full, result)
            if full:
                result.problems += _sidecar_problems(car_uri, shard, split, car_ledger)
        if full and car_ledger.to_dict() != entry.ledger.to_dict():
            result.problems.append(
                f"{split}: the sidecars' ledgers do not add up to the manifest's; one of them "
                f"was edited: delete the edited sidecars, then {REWRITE}"
            )
    result.problems += _extra_files(output, set(SPLITS) | set(manifest.splits), listed)
    return result


def ledger_problems(entry: SplitRecord, block_size: int) -> list[str]:
    """A split's manifest record against itself: ledger balance, blocks, tokens and bytes."""
    ledger = entry.ledger
    out = [f"ledger: {p}" for p in ledger.problems()]
    if ledger.num_block_tokens != entry.num_blocks * block_size:
        out.append(
            f"ledger block tokens {ledger.num_block_tokens:,} != blocks {entry.num_blocks:,}"
            f" x block_size {block_size}"
        )
    if entry.num_tokens != ledger.num_block_tokens:
        out.append(f"tokens {entry.num_tokens:,} != ledger block tokens")
    for key in ("num_blocks", "num_bytes"):
        total = sum(getattr(s, key) for s in entry.shards)
        if getattr(entry, key) != total:
            out.append(f"{key} {getattr(entry, key):,} != {total:,}, the sum over its shards")
    return out


def _shard_problems(
    uri: str, shard: ShardRecord, expected: ShardMeta, full: bool, result: Verification
) -> list[str]:
    name = shard.file
    check = check_shard(
        uri,
        num_bytes=shard.num_bytes,
        sha256=shard.sha256 if full else None,
        expected=expected,
        name=name,
    )
    result.bytes_read += check.bytes_hashed
    out = [
        f"{name}: {p}" + (" (the manifest lists it)" if p == "missing" else "") + f"; {REBUILD}"
        for p in check.problems
    ]
    if full and check.metadata_ok:
        try:
            out += _content_problems(name, ShardReader(uri, check.data), shard, expected, result)
        except (ValueError, pa.ArrowException, OSError) as exc:  # DataError is a ValueError
            out.append(f"{name}: does not read as a shard ({brief(exc, 160)}); {REBUILD}")
    return out


def _content_problems(
    name: str, reader: ShardReader, shard: ShardRecord, expected: ShardMeta, result: Verification
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
    if blocks != shard.num_blocks or starts != shard.num_doc_starts:
        out.append(
            f"{name}: holds {blocks:,} blocks and {starts:,} document starts, the manifest says "
            f"{shard.num_blocks:,} and {shard.num_doc_starts:,}; {REBUILD}"
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


def _sidecar_problems(uri: str, shard: ShardRecord, split: str, total: Ledger) -> list[str]:
    name = shard.sidecar_file
    fix = "delete it and rerun the same `pipeline run` command"
    try:
        data = read_json(uri)
    except DataError:
        return [f"{name}: missing or not JSON (the sidecar of {shard.file}); {fix}"]
    try:
        car = Sidecar.from_dict(data)
    except DataError as exc:
        return [f"{name}: {exc} (the sidecar of {shard.file}); {fix}"]
    except (KeyError, TypeError) as exc:
        return [f"{name}: not a sidecar of this format ({exc!r}); {fix}"]
    total.add(car.ledger)
    found = {
        "split": car.split,
        "file": f"{split}/{car.shard}",
        **{k: getattr(car, k) for k in ("sha256", "num_bytes", "num_blocks", "num_doc_starts")},
    }
    wanted = {"split": split, **shard.to_dict()}
    return [
        f"{name}: {key} is {found[key]!r}, the manifest says {wanted[key]!r}; {fix}"
        for key in found
        if found[key] != wanted[key]
    ]


def _tokenizer_problems(output: str, record: TokenizerRecord, full: bool) -> list[str]:
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
    if info.sha256 != record.sha256:
        out.append(
            f"{TOKENIZER_FILE}: canonical sha256 {info.sha256[:16]}… differs from the "
            f"manifest's {record.sha256[:16]}…; {fix}"
        )
    if info.vocab_size != record.vocab_size:
        out.append(
            f"{TOKENIZER_FILE}: vocabulary {info.vocab_size:,}, the manifest says "
            f"{record.vocab_size:,}; {fix}"
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
