"""The output folder's life cycle: claim it for a run, find finished units, clean on overwrite.

`OUT/run.json` records the run's identity (config, tokenizer, inputs) when a run starts. A
rerun with the same identity resumes; a different one is refused with the difference named,
unless --overwrite, which removes the old run's files first. A unit is finished when each
split's sidecar carries this run's digest and its shard has the recorded size and sha256.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator
from glob import has_magic as glob_chars
from pathlib import Path
from typing import Any

import pyarrow as pa
import tokenizers

from pipeline import FORMAT_VERSION, __version__
from pipeline.core.split import SPLITS
from pipeline.errors import UsageError
from pipeline.format import storage
from pipeline.format.integrity import check_shard
from pipeline.format.locks import exclusive as exclusive_lock
from pipeline.format.paths import (
    LOCK_FILE,
    MANIFEST_NAME,
    RUN_FILE,
    TIMINGS_FILE,
    TOKENIZER_FILE,
    shard_uri,
)
from pipeline.format.records import read_json, write_json_atomic
from pipeline.format.sidecars import Sidecar, read_sidecar
from pipeline.ingest.units import format_of


def run_identity(config: dict[str, Any], tokenizer_sha256: str, inputs: list[dict]) -> dict:
    """What decides the output bytes: a rerun resumes only when all of this is the same.

    Besides config, tokenizer and inputs (path, size, rows, modification time), the versions
    of the code that write the bytes: this package, its format, tokenizers and pyarrow.
    """
    config = {k: v for k, v in config.items() if k != "output"}
    versions = {
        "pipeline": __version__,
        "format": FORMAT_VERSION,
        "tokenizers": tokenizers.__version__,
        "pyarrow": pa.__version__,
    }
    stamped = [{**i, "mtime_ns": storage.mtime_ns(i["path"])} for i in inputs]
    return {
        "config": config,
        "tokenizer_sha256": tokenizer_sha256,
        "inputs": stamped,
        "versions": versions,
    }


def digest_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def check_not_inside_inputs(output: str, inputs: tuple[str, ...]) -> None:
    out = storage.normalize(output).rstrip("/") + "/"
    for item in inputs:
        if glob_chars(item) or format_of(item):
            continue  # a file or a glob, not a folder the output could sit in
        folder = storage.normalize(item).rstrip("/") + "/"
        if out.startswith(folder):
            raise UsageError(
                f"--output {output}: expected a folder outside the input folder {item}, found "
                "it inside; a rerun would read its own shards. Choose another --output"
            )


def claim(output: str, identity: dict[str, Any], overwrite: bool) -> str:
    """Record the run in OUT/run.json (or check it matches); returns the run digest."""
    digest = digest_of(identity)
    run_uri = storage.join(output, RUN_FILE)
    if storage.exists(run_uri):
        previous = read_json(run_uri)
        if previous.get("digest") != digest:
            if not overwrite:
                raise UsageError(
                    f"--output {output}: expected an empty folder or one from the same run, "
                    f"found another run there ({describe_difference(previous, identity)}); "
                    "pass --overwrite to replace it or choose another --output"
                )
            remove_run(output)
    elif _has_foreign_files(output):
        if not overwrite:
            raise UsageError(
                f"--output {output}: expected an empty folder, found files that no run of this "
                "pipeline wrote; pass --overwrite to replace them or choose another --output"
            )
        remove_run(output)
    storage.make_dirs(output)
    if not storage.exists(run_uri):
        write_json_atomic(run_uri, {"digest": digest, **identity})
    return digest


def describe_difference(previous: dict[str, Any], identity: dict[str, Any]) -> str:
    diffs = []
    old_cfg, new_cfg = previous.get("config", {}), identity["config"]
    for key in sorted(set(old_cfg) | set(new_cfg)):
        if old_cfg.get(key) != new_cfg.get(key):
            diffs.append(f"{key}: {old_cfg.get(key)!r} there, {new_cfg.get(key)!r} now")
    if previous.get("tokenizer_sha256") != identity["tokenizer_sha256"]:
        diffs.append("tokenizer: a different tokenizer.json (sha256 differs)")
    if previous.get("inputs") != identity["inputs"]:
        diffs.append("inputs: different files, sizes, row counts or modification times")
    old_v, new_v = previous.get("versions", {}), identity["versions"]
    diffs += [
        f"{name} version: {old_v.get(name)!r} there, {new_v[name]!r} now"
        for name in sorted(new_v)
        if old_v.get(name) != new_v[name]
    ]
    return "; ".join(diffs)


def _has_foreign_files(output: str) -> bool:
    if not storage.exists(output):
        return False
    return any(not uri.endswith("/" + LOCK_FILE) for uri in storage.list_files(output, True))


@contextlib.contextmanager
def exclusive(output: str) -> Iterator[None]:
    """One run at a time in a local output folder: an exclusive flock on OUT/.lock.

    The kernel releases it when the process dies, so a crash leaves no stale lock. Object
    stores have no such lock: do not point two runs at one s3:// output.
    """
    if storage.is_remote(output):
        yield
        return

    def refuse() -> None:
        raise UsageError(
            f"--output {output}: expected no other run writing there, found one running (it "
            f"holds {LOCK_FILE}); wait for it to finish, or choose another --output"
        )

    with exclusive_lock(Path(storage.normalize(output), LOCK_FILE), on_busy=refuse):
        yield


RUN_FILES = (MANIFEST_NAME, RUN_FILE, TOKENIZER_FILE, TIMINGS_FILE)


def remove_run(output: str) -> None:
    """Delete what a run writes: its top-level files and the split folders, nothing else
    (a training run kept in OUT/run/ has files of the same names)."""
    for uri in storage.list_files(output, recursive=True):
        relative = uri[len(output) :].lstrip("/")
        top = relative.split("/", 1)[0]
        if relative in RUN_FILES or (top in SPLITS and "/" in relative):
            storage.remove(uri)


def finished_sidecars(output: str, index: int, digest: str) -> dict[str, Sidecar] | None:
    """The unit's sidecars if its work is complete and intact, else None (redo it)."""
    found = {}
    for split in SPLITS:
        car = read_sidecar(output, split, index)
        if car is None or car.run_digest != digest:
            return None
        uri = shard_uri(output, split, index)
        check = check_shard(uri, num_bytes=car.num_bytes, sha256=car.sha256)
        if not check.ok:
            return None
        found[split] = car
    return found
