"""From a run's config to what the format writes: the packing spec, shard metadata, and the
commit of one shard (its file atomically, then its sidecar). Used by a unit and by stitching.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.ledger import Ledger
from pipeline.core.packing import PackSpec
from pipeline.errors import DataError
from pipeline.format.paths import shard_name
from pipeline.format.shards import ShardMeta, ShardWriter
from pipeline.format.sidecars import Sidecar, write_sidecar
from pipeline.ingest.tokenization import TokenizerInfo
from pipeline.run.config import RunConfig


def pack_spec(config: RunConfig, info: TokenizerInfo) -> PackSpec:
    if config.packing == "concat":
        return PackSpec(
            block_size=config.block_size,
            doc_prefix=info.prefix_ids,
            doc_suffix=info.suffix_ids,
            frame=None,
        )
    cls_id, sep_id = info.special_ids.get("cls"), info.special_ids.get("sep")
    if cls_id is None or sep_id is None:
        raise DataError(
            f"tokenizer {config.tokenizer}: framed packing expected a CLS/SEP (or BOS/EOS) "
            "pair, found none in its post-processor or vocabulary; use --packing concat"
        )
    return PackSpec(
        block_size=config.block_size, doc_prefix=(), doc_suffix=(sep_id,), frame=(cls_id, sep_id)
    )


def shard_meta(config: RunConfig, info: TokenizerInfo, split: str) -> ShardMeta:
    return ShardMeta(
        block_size=config.block_size,
        dtype=info.dtype,
        packing=config.packing,
        split=split,
        tokenizer_sha256=info.sha256,
        vocab_size=info.vocab_size,
        special_ids=info.special_ids,
    )


def publish_shard(
    output: str,
    split: str,
    index: int,
    writer: ShardWriter,
    unit: dict[str, object],
    run_digest: str,
    ledger: Ledger,
    leftover: np.ndarray,
    leftover_starts: np.ndarray,
) -> Sidecar:
    """Commit one shard: the shard file (atomically), then its sidecar."""
    written = writer.close()
    sidecar = Sidecar(
        split=split,
        shard=shard_name(index),
        sha256=written.sha256,
        num_bytes=written.num_bytes,
        num_blocks=written.num_blocks,
        num_doc_starts=written.num_doc_starts,
        unit=unit,
        run_digest=run_digest,
        ledger=ledger,
        leftover_tokens=leftover.tolist(),
        leftover_starts=leftover_starts.tolist(),
    )
    write_sidecar(output, index, sidecar)
    return sidecar
