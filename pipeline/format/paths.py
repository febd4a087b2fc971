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


def sidecar_uri(output: str, split: str, index: int) -> str:
    return storage.join(
        output, split, shard_name(index).removesuffix(SHARD_SUFFIX) + SIDECAR_SUFFIX
    )


def shard_uri(output: str, split: str, index: int) -> str:
    return storage.join(output, split, shard_name(index))
