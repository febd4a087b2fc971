"""The output folder's life cycle: claim it for a run, find finished units, clean on overwrite.

`OUT/run.json` records the run's identity (config, tokenizer, inputs) when a run starts. A
rerun with the same identity resumes; a different one is refused with the difference named,
unless --overwrite, which removes the old run's files first. A unit is finished when each
split's sidecar carries this run's digest and its shard has the recorded size and sha256.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from pipeline import storage
from pipeline.errors import UsageError
from pipeline.manifest import (
    MANIFEST_NAME,
    Sidecar,
    read_json,
    read_sidecar,
    shard_uri,
    write_json_atomic,
)
from pipeline.split import SPLITS

RUN_FILE = "run.json"


def run_identity(config: dict[str, Any], tokenizer_sha256: str, inputs: list[dict]) -> dict:
    config = {k: v for k, v in config.items() if k != "output"}
    return {"config": config, "tokenizer_sha256": tokenizer_sha256, "inputs": inputs}


def digest_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def check_not_inside_inputs(output: str, input_paths: list[str], inputs: tuple[str, ...]) -> None:
    if storage.is_remote(output):
        return
    out = Path(storage.normalize(output))
    for item in inputs:
        if storage.is_remote(item) or not Path(item).is_dir():
            continue
        folder = Path(storage.normalize(item))
        if out == folder or folder in out.parents:
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
        diffs.append("inputs: different files, sizes or row counts")
    return "; ".join(diffs) or "a different pipeline version"


def _has_foreign_files(output: str) -> bool:
    return storage.exists(output) and bool(storage.list_files(output, recursive=True))


def remove_run(output: str) -> None:
    for uri in storage.list_files(output, recursive=True):
        name = uri.rsplit("/", 1)[-1]
        top = uri[len(output) :].lstrip("/").split("/", 1)[0]
        if top in SPLITS or name in (MANIFEST_NAME, RUN_FILE, "tokenizer.json", "timings.json"):
            storage.remove(uri)


def finished_sidecars(output: str, index: int, digest: str) -> dict[str, Sidecar] | None:
    """The unit's sidecars if its work is complete and intact, else None (redo it)."""
    found = {}
    for split in SPLITS:
        car = read_sidecar(output, split, index)
        if car is None or car.run_digest != digest:
            return None
        uri = shard_uri(output, split, index)
        if not storage.exists(uri) or storage.size_of(uri) != car.num_bytes:
            return None
        if hashlib.sha256(storage.read_bytes(uri)).hexdigest() != car.sha256:
            return None
        found[split] = car
    return found
