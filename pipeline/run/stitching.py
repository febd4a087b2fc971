"""The last step of a run: pack every unit's leftover, in unit order, into one shard per split.

A unit ends with less than one block of content it could not fill (its leftover, kept in its
sidecar). Concatenated in unit order, the leftovers are packed by the same `Packer`; what is
left after that (< one block) is all a split drops in a whole run, and the ledger says so.
"""

from __future__ import annotations

import numpy as np

from pipeline.core.ledger import Ledger
from pipeline.core.packing import Packer
from pipeline.format.paths import shard_uri
from pipeline.format.shards import ShardWriter
from pipeline.format.sidecars import Sidecar
from pipeline.ingest.tokenization import TokenizerInfo
from pipeline.run.config import RunConfig
from pipeline.run.publish import pack_spec, publish_shard, shard_meta


def stitch_leftovers(
    config: RunConfig,
    info: TokenizerInfo,
    split: str,
    cars: list[Sidecar],
    digest: str,
    index: int,
) -> Sidecar:
    spec = pack_spec(config, info)
    streams, starts, offset = [], [], 0
    for car in cars:
        streams.append(np.asarray(car.leftover_tokens, dtype=np.uint32))
        starts.append(np.asarray(car.leftover_starts, dtype=np.int64) + offset)
        offset += len(car.leftover_tokens)
    stream = np.concatenate(streams) if streams else np.zeros(0, np.uint32)
    packer = Packer(spec)
    blocks = packer.add(stream, np.concatenate(starts) if starts else np.zeros(0, np.int64))
    dropped, dropped_starts = packer.leftover()
    writer = ShardWriter(
        shard_uri(config.output, split, index),
        shard_meta(config, info, split),
        config.batch_blocks,
        config.compression_level,
    )
    writer.write(blocks)
    ledger = Ledger(
        num_carried_in=int(stream.size),
        num_special_tokens=blocks.num_blocks * spec.frame_tokens,
        num_block_tokens=blocks.num_blocks * spec.block_size,
        num_dropped_tokens=int(dropped.size),
        num_documents_dropped=int(dropped_starts.size),
    )
    empty = np.zeros(0, np.int64)
    unit = {"index": index, "kind": "tail"}
    return publish_shard(config.output, split, index, writer, unit, digest, ledger, empty, empty)
