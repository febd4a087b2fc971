"""The output folder's life cycle: claim it for a run, find finished units, clean on overwrite.

`OUT/run.json` records the run's identity (config, tokenizer, inputs) when a run starts. A
rerun with the same identity resumes (removing its own leftover temporary files); a different
one is refused with the difference named, unless --overwrite, which removes the old run's files
first. Files no run wrote are never removed: a folder holding them and no run is refused.
A unit is finished when each split's sidecar carries this run's digest and its shard has the
recorded size and sha256.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import itertools
import json
import os
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pyarrow as pa
import tokenizers

from pipeline import FORMAT_VERSION, __version__
from pipeline.core.split import SPLITS
from pipeline.errors import DataError, UsageError
from pipeline.format import storage
from pipeline.format.integrity import check_shard
from pipeline.format.locks import exclusive as exclusive_lock
from pipeline.format.paths import LOCK_FILE, RUN_FILE, is_run_file, is_temporary, shard_uri
from pipeline.format.records import read_json, write_json_atomic
from pipeline.format.sidecars import Sidecar, read_sidecar
from pipeline.ingest.units import WorkUnit
from pipeline.run.output_lock import object_lock


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
    stamped = [{**i, "mtime_ns": _mtime_ns(i["path"])} for i in inputs]
    return {
        "config": config,
        "tokenizer_sha256": tokenizer_sha256,
        "inputs": stamped,
        "versions": versions,
    }


def _mtime_ns(path: str) -> int | None:
    """os.stat locally (the same nanoseconds as pyarrow's, without a realpath per file)."""
    return storage.mtime_ns(path) if storage.is_remote(path) else os.stat(path).st_mtime_ns


def digest_of(identity: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()


def check_output_apart(output: str, inputs: tuple[str, ...], files: list[str]) -> None:
    """Refuse an output folder that is, holds or sits inside an input (real paths compared:
    `files` are list_inputs' paths, links not resolved).

    Inside an input folder, a rerun would read its own shards; holding an input (the input's
    parent or any ancestor), --overwrite or a later cleanup could touch the user's data.
    """
    if storage.exists(output) and not storage.is_dir(output):
        raise UsageError(
            f"--output {output}: expected a folder, found a file; choose a folder name "
            "(it is created if missing)"
        )
    out = _real(output)
    for item in inputs:
        if storage.is_dir(item) and _within(out, _real(item)):
            raise UsageError(
                f"--output {output}: expected a folder outside the input folder {item}, found "
                "it inside; a rerun would read its own shards. Choose another --output"
            )
    for path in files:
        if _within(_real(path), out):
            raise UsageError(
                f"--output {output}: expected a folder that holds no input, found the input "
                f"{path} inside it; choose an --output outside the inputs' folders"
            )


def _real(uri: str) -> str:
    return uri.rstrip("/") if storage.is_remote(uri) else os.path.realpath(storage.normalize(uri))


def _within(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def claim(output: str, identity: dict[str, Any], overwrite: bool) -> str:
    """Record the run in OUT/run.json (or check it matches); returns the run digest.

    Only files a run writes (paths.is_run_file) in a folder that is a run's are ever removed;
    a folder holding anything else and no run is refused with those files named,
    --overwrite or not.
    """
    digest = digest_of(identity)
    run_uri = storage.join(output, RUN_FILE)
    own, foreign, previous = _survey(output)
    if previous is not None and previous.get("digest") == digest:
        remove_own_leftovers(output)  # a killed run's
    elif own - {LOCK_FILE} or foreign:
        if not own - {LOCK_FILE}:
            _refuse_foreign(output, foreign)
        if not overwrite:
            found = (
                f"another run there ({describe_difference(previous, identity)})"
                if previous is not None
                else f"an earlier run whose {RUN_FILE} is damaged"
            )
            raise UsageError(
                f"--output {output}: expected an empty folder or one from the same run, "
                f"found {found}; pass --overwrite to replace it or choose another --output"
            )
        _remove(output, [r for r in own if r != LOCK_FILE])
    storage.make_dirs(output)
    if previous is None or previous.get("digest") != digest:
        write_json_atomic(run_uri, {"digest": digest, **identity})
    return digest


def remove_own_leftovers(output: str) -> None:
    """Remove the temporary files (`.NAME.tmp-PID`) that runs of this pipeline left in OUT.

    Called by `claim` on a resume (a killed run's leftovers) and by the runner once every unit
    is done (a worker killed mid-write, then retried, leaves its own): only under the lock, with
    no worker of this run writing. On an object store there are none (a PUT is atomic), and
    a listing of 10^5 objects is not free: nothing to do.
    """
    if storage.is_remote(output):
        return
    own, _, _ = _survey(output)
    _remove(output, [r for r in own if is_temporary(r)])


def check_claimable(output: str) -> None:
    """Before the lock file is created: refuse a folder of the user's own files untouched
    (claim checks again under the lock)."""
    if storage.exists(output):
        own, foreign, _ = _survey(output)
        if foreign and not own - {LOCK_FILE}:
            _refuse_foreign(output, foreign)


def _refuse_foreign(output: str, foreign: list[str]) -> None:
    raise UsageError(
        f"--output {output}: expected an empty folder or one of this pipeline's runs, "
        f"found files that no run of it wrote ({_names(foreign)}); they are never "
        "removed (--overwrite neither): choose another --output or move them"
    )


def _read_run_record(run_uri: str) -> dict[str, Any] | None:
    """The earlier run's record, or None when run.json is truncated, empty, null or not an
    object (a crash or a hand edit): then only --overwrite can replace that run."""
    try:
        record = read_json(run_uri)
    except DataError:
        return None
    return record if isinstance(record, dict) and isinstance(record.get("digest"), str) else None


def _survey(output: str) -> tuple[set[str], list[str], dict[str, Any] | None]:
    """(the run's own files, every other file, the run's record) below OUT, as '/'-separated
    relative paths.

    Names alone do not make a file the run's: a folder is a run's when its run.json reads, or
    (damaged) when it sits beside the run's shards or sidecars or beside nothing foreign.
    Otherwise a `tokenizer.json` or `manifest.json` there is the user's, hence foreign.
    """
    own, foreign = set(), []
    base = output.rstrip("/")
    for uri in storage.list_files(output, recursive=True):
        relative = uri[len(base) :].lstrip("/").replace(os.sep, "/")
        (own.add(relative) if is_run_file(relative) else foreign.append(relative))
    previous = _read_run_record(storage.join(output, RUN_FILE)) if RUN_FILE in own else None
    in_splits = any("/" in r and not is_temporary(r) for r in own)
    if previous is None and not (RUN_FILE in own and (in_splits or not foreign)):
        foreign = sorted(foreign + [r for r in own if r != LOCK_FILE])
        own &= {LOCK_FILE}
    return own, foreign, previous


def _names(relative: list[str], most: int = 5) -> str:
    more = f" and {len(relative) - most} more" if len(relative) > most else ""
    return ", ".join(relative[:most]) + more


def _remove(output: str, relative: list[str]) -> None:
    for name in sorted(relative):
        storage.remove(storage.join(output, name))


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


@contextlib.contextmanager
def exclusive(output: str) -> Iterator[None]:
    """One run at a time in a local output folder: an exclusive flock on OUT/.lock.

    The kernel releases it when the process dies, so a crash leaves no stale lock. On an
    object store: a lock object created with If-None-Match (output_lock.py).
    """
    if storage.is_remote(output):
        with object_lock(output):
            yield
        return

    def refuse() -> None:
        raise UsageError(
            f"--output {output}: expected no other run writing there, found one running (it "
            f"holds {LOCK_FILE}); wait for it to finish, or choose another --output"
        )

    with exclusive_lock(Path(storage.normalize(output), LOCK_FILE), on_busy=refuse):
        yield


def _same_unit(recorded: dict[str, Any], unit: WorkUnit) -> bool:
    """Did the sidecar come from this very unit (the plan of the code that wrote it)?"""
    return {k: v for k, v in recorded.items() if k not in ("error", "skipped")} == unit.to_dict()


def sidecars_in_order(
    output: str, indices: list[int], digest: str
) -> Iterator[tuple[int, dict[str, Sidecar] | None]]:
    """Each unit's sidecars (None if missing or of another run), in order, read ahead by a
    bounded window of threads: after the work, the driver reads 2 small objects per unit,
    which on object storage one after another is ~40 ms a unit (20 min for 30,000 units)."""
    threads = 32 if storage.is_remote(output) else min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(threads, thread_name_prefix="sidecars") as pool:
        window: collections.deque = collections.deque()
        pending = iter(indices)
        for index in itertools.islice(pending, 4 * threads):
            window.append((index, pool.submit(_sidecars_of_run, output, index, digest)))
        while window:
            index, future = window.popleft()
            for nxt in itertools.islice(pending, 1):
                window.append((nxt, pool.submit(_sidecars_of_run, output, nxt, digest)))
            yield index, future.result()


def _sidecars_of_run(output: str, index: int, digest: str) -> dict[str, Sidecar] | None:
    cars = {split: read_sidecar(output, split, index) for split in SPLITS}
    if any(c is None or c.run_digest != digest for c in cars.values()):
        return None
    return cars  # type: ignore[return-value]


def finished_units(
    output: str, units: list[WorkUnit], digest: str
) -> dict[int, dict[str, Sidecar] | None]:
    """`finished_sidecars` of every unit, checked concurrently.

    Locally each shard is re-hashed (a disk can rot; the page cache makes it cheap). On object
    storage a shard is trusted when its object exists with the size its sidecar records: a
    PUT is atomic, the store checksums the upload, and the sidecar is written only after
    the shard. Re-hashing there would pull every byte of the output through the driver (a
    1 TB corpus: ~350 GB); `pipeline verify` is the full check. The remaining requests
    (two sidecar reads and a few HEADs a unit) wait on the store, so 32 run at once. Measured:
    tests/bench/bench_resume.py (README, "What happens when things fail").
    """
    remote = storage.is_remote(output)
    threads = 32 if remote else min(8, os.cpu_count() or 1)
    check = functools.partial(finished_sidecars, output, digest=digest, rehash=not remote)
    if threads == 1 or len(units) < 2:
        return {u.index: check(u) for u in units}
    with ThreadPoolExecutor(threads, thread_name_prefix="resume-check") as pool:
        return {u.index: cars for u, cars in zip(units, pool.map(check, units), strict=True)}


def finished_sidecars(
    output: str, unit: WorkUnit, digest: str, rehash: bool = True
) -> dict[str, Sidecar] | None:
    """The unit's sidecars if its work is complete and intact, else None (redo it)."""
    index = unit.index
    found = {}
    for split in SPLITS:
        car = read_sidecar(output, split, index)
        if car is None or car.run_digest != digest or not _same_unit(car.unit, unit):
            return None
        uri = shard_uri(output, split, index)
        check = check_shard(uri, num_bytes=car.num_bytes, sha256=car.sha256 if rehash else None)
        if not check.ok:
            return None
        found[split] = car
    return found
