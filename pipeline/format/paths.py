"""The names of a run's files: one place, so writers and readers never re-derive them.

OUT/
  manifest.json            written last: the commit marker of a finished run
  tokenizer.json           the run's tokenizer (canonical JSON; its sha256 is the tokenizer id)
  run.json, timings.json   the run's identity (for resume), its timings
  .lock                    held by a running `pipeline run`
  .NAME.tmp-PID            a file being written (renamed to NAME when complete)
  <split>/shard-NNNNN.arrow and shard-NNNNN.json (its sidecar)
"""

from __future__ import annotations

import re

from pipeline.core.split import SPLITS
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


# What a run writes, by name: only files matching these may ever be removed or replaced.
# storage.write_bytes_atomic writes `.NAME.tmp-PID` beside NAME and renames it; a process
# killed in between (kill -9) leaves that temporary file, which is the run's own too.
TOP_LEVEL_FILES = (MANIFEST_NAME, TOKENIZER_FILE, RUN_FILE, TIMINGS_FILE, LOCK_FILE)
_SPLIT_FILE = re.compile(r"shard-\d{5,}(?:\.arrow|\.json)")
_TEMP_FILE = re.compile(r"\.(?P<final>.+)\.tmp-\d+")


def is_temporary(relative: str) -> bool:
    """A temporary file of a run (`.shard-00003.arrow.tmp-4242`) at its place in OUT."""
    folder, _, name = relative.rpartition("/")
    match = _TEMP_FILE.fullmatch(name)
    return match is not None and is_run_file(f"{folder}/{match['final']}".lstrip("/"))


def is_run_file(relative: str) -> bool:
    """Is this path (relative to OUT, '/'-separated) one that a run of this pipeline writes?"""
    parts = relative.split("/")
    if len(parts) == 1:
        return parts[0] in TOP_LEVEL_FILES or is_temporary(relative)
    if len(parts) == 2 and parts[0] in SPLITS:
        return _SPLIT_FILE.fullmatch(parts[1]) is not None or is_temporary(relative)
    return False
