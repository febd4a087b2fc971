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


class TailStitcher:
    """Packs the leftovers of one split as the driver reads them, in unit order.

    Streaming keeps the driver's memory flat in the number of units: it holds the packer's
    remainder (< one block) and the tail shard being built, never every unit's leftover
    (10^5 units x ~64 leftover tokens as Python ints would be ~0.5 GB). Packing the
    leftovers one by one gives the same blocks as packing their concatenation (`Packer`
    carries its remainder; `ShardWriter` cuts record batches at fixed sizes).
    """

    def __init__(
        self, config: RunConfig, info: TokenizerInfo, split: str, digest: str, index: int
    ) -> None:
        self.config, self.split, self.digest, self.index = config, split, digest, index
        self.spec = pack_spec(config, info)
        self.packer = Packer(self.spec)
        self.writer = ShardWriter(
            shard_uri(config.output, split, index),
            shard_meta(config, info, split),
            config.batch_blocks,
            config.compression_level,
        )
        self.carried = self.num_blocks = 0

    def add(self, car: Sidecar) -> None:
        tokens = np.asarray(car.leftover_tokens, dtype=np.uint32)
        blocks = self.packer.add(tokens, np.asarray(car.leftover_starts, dtype=np.int64))
        self.writer.write(blocks)
        self.carried += int(tokens.size)
        self.num_blocks += blocks.num_blocks

    def finish(self) -> Sidecar:
        dropped, dropped_starts = self.packer.leftover()
        ledger = Ledger(
            num_carried_in=self.carried,
            num_special_tokens=self.num_blocks * self.spec.frame_tokens,
            num_block_tokens=self.num_blocks * self.spec.block_size,
            num_dropped_tokens=int(dropped.size),
            num_documents_dropped=int(dropped_starts.size),
        )
        empty = np.zeros(0, np.int64)
        unit = {"index": self.index, "kind": "tail"}
        return publish_shard(
            self.config.output, self.split, self.index, self.writer, unit, self.digest, ledger,
            empty, empty,
        )  # fmt: skip
