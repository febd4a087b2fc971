"""The names of a run's files: one place, so writers and readers never re-derive them.

OUT/
  manifest.json            written last: the commit marker of a finished run
  tokenizer.json           the run's tokenizer (canonical JSON; its sha256 is the tokenizer id)
  run.json, timings.json   the run's identity (for resume), its timings
  .lock                    held by a running `pipeline run`
  <split>/shard-NNNNN.arrow and shard-NNNNN.json (its sidecar)
"""

from __future__ import annotations

from pipeline.format import storage

MANIFEST_NAME = "manifest.json"
TOKENIZER_FILE = "tokenizer.json"
RUN_FILE = "run.json"
TIMINGS_FILE = "timings.json"
LOCK_FILE = ".lock"
SHARD_SUFFIX = ".arrow"
SIDECAR_SUFFIX = ".json"


def shard_name(index: int) -> str:
    return f"shard-{index:05d}{SHARD_SUFFIX}"


def sidecar_of(shard: str) -> str:
    """The sidecar's name (or path) for a shard's: shard-NNNNN.arrow -> shard-NNNNN.json."""
    return shard.removesuffix(SHARD_SUFFIX) + SIDECAR_SUFFIX


def sidecar_uri(output: str, split: str, index: int) -> str:
    return storage.join(output, split, sidecar_of(shard_name(index)))


def shard_uri(output: str, split: str, index: int) -> str:
    return storage.join(output, split, shard_name(index))
