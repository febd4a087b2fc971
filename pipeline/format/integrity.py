"""Is this shard the one its record describes? One check, run at the depth each caller needs.

Cheapest first: the file exists with the recorded size (a stat); its schema metadata matches
what the manifest says (the Arrow footer, a few KB, also on an object store); its sha256 is the
recorded one (every byte read). Resume (run/output_folder) and the dataset cache hash without
reading metadata; the trainer opening a split reads metadata without hashing; `pipeline verify`
does both (and then reads the blocks themselves, commands/verification.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pyarrow as pa

from pipeline.errors import brief
from pipeline.format import storage
from pipeline.format.manifest import Manifest
from pipeline.format.shards import ShardMeta, shard_schema

META_KEYS = tuple(ShardMeta.__dataclass_fields__)


@dataclass
class ShardCheck:
    """What a check found: problems in words (without the fix, the caller's to add)."""

    problems: list[str] = field(default_factory=list)
    bytes_hashed: int = 0
    metadata_ok: bool = False  # the footer was read and matched: the blocks may be read
    data: bytes | None = None  # a remote file's bytes, read once to hash: read blocks from it

    @property
    def ok(self) -> bool:
        return not self.problems


def check_shard(
    uri: str,
    *,
    num_bytes: int | None,
    sha256: str | None = None,
    expected: ShardMeta | None = None,
    meta_keys: tuple[str, ...] = META_KEYS,
    name: str | None = None,
) -> ShardCheck:
    """Check the file at `uri`: its size when `num_bytes` is given, its sha256 when `sha256`
    is, its schema metadata (`meta_keys` of it) against `expected` when that is. A remote file
    is hashed in memory, and its bytes kept in the result; `name` is how errors inside the
    file name it (default: `uri`)."""
    check = ShardCheck()
    if not storage.exists(uri):
        check.problems.append("missing")
        return check
    size = storage.size_of(uri)
    if num_bytes is not None and size != num_bytes:
        what = "truncated" if size < num_bytes else "size differs"
        check.problems.append(f"{what}: expected {num_bytes:,} bytes, found {size:,}")
        return check
    try:
        if sha256 is not None:
            if storage.is_remote(uri):
                check.data = storage.read_bytes(uri)
                digest = hashlib.sha256(check.data).hexdigest()
            else:
                digest = storage.sha256_of(uri)
            check.bytes_hashed = size
            if digest != sha256:
                check.problems.append(
                    f"altered: sha256 {digest[:16]}… differs from the manifest's {sha256[:16]}…"
                )
        if expected is not None:
            schema = read_schema(uri, check.data)
            meta = meta_problems(name or uri, schema, expected, meta_keys)
            check.problems += meta
            check.metadata_ok = not meta
    except (ValueError, pa.ArrowException, OSError) as exc:  # DataError is a ValueError
        check.problems.append(f"does not read as a shard ({brief(exc, 160)})")
    return check


def read_schema(uri: str, data: bytes | None = None) -> pa.Schema:
    """The schema from the Arrow file footer alone (a few KB, also on an object store)."""
    if data is not None:
        return pa.ipc.open_file(pa.BufferReader(data)).schema
    fs, path = storage.resolve(uri)
    with fs.open_input_file(path) as f:
        return pa.ipc.open_file(f).schema


def meta_problems(
    name: str, schema: pa.Schema, expected: ShardMeta, keys: tuple[str, ...] = META_KEYS
) -> list[str]:
    meta = ShardMeta.from_schema(schema, name)
    out = [
        f"metadata {key} is {getattr(meta, key)!r}, the manifest says {getattr(expected, key)!r}"
        for key in keys
        if getattr(meta, key) != getattr(expected, key)
    ]
    if keys == META_KEYS and not schema.remove_metadata().equals(
        shard_schema(expected).remove_metadata()
    ):
        out.append(f"columns {schema.types} differ from the format's")
    return out


def expected_meta(manifest: Manifest, split: str) -> ShardMeta:
    """The metadata every shard of `split` carries, by the manifest."""
    tok = manifest.tokenizer
    return ShardMeta(
        format_version=manifest.format_version,
        block_size=manifest.block_size,
        dtype=tok.dtype,
        packing=manifest.packing,
        split=split,
        tokenizer_sha256=tok.sha256,
        vocab_size=tok.vocab_size,
        special_ids=tok.special_ids,
    )
