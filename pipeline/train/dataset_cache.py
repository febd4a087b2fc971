"""A local copy of a finished dataset that lives on object storage, checked by sha256.

The trainer reads shards with memory maps, so an `s3://` dataset is first mirrored into a
cache folder (default `~/.cache/mlm-pipeline/<bucket/path>`): the manifest, the tokenizer, and
every shard the manifest lists. A shard already in the cache is kept when its size and sha256
match the manifest, otherwise fetched again; every download is checked before it is published
(atomic rename), so an interrupted download never leaves a file that looks finished. Sidecars
carry no checksum in the manifest, so they are always fetched (they are small) and rewritten
when they changed; files in the split folders that the manifest does not list (an older
dataset's shards, an interrupted download's temporary file) are removed. A cached manifest that
differs from the remote one is removed first and the new one copied last, like in a run: a
refresh cut short leaves a folder without a manifest, never an old manifest over new shards.

Every rank of a `torchrun` job mirrors the same dataset at the same time, so mirroring holds an
exclusive lock (`fcntl.flock` on `<bucket/path>.lock` beside the folder): the first process
downloads, the others wait, then find every file in place and only check the sha256s.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from pipeline.core.split import SPLITS
from pipeline.errors import DataError
from pipeline.format import storage
from pipeline.format.integrity import check_shard
from pipeline.format.locks import exclusive
from pipeline.format.manifest import Manifest, load_manifest
from pipeline.format.paths import MANIFEST_NAME, TOKENIZER_FILE

CACHE_ENV = "PIPELINE_CACHE_DIR"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "mlm-pipeline"))


def cache_folder(uri: str, cache_root: Path | None = None) -> Path:
    """Where the dataset at a remote `uri` is mirrored."""
    return (cache_root or default_cache_root()) / uri.split("://", 1)[1].strip("/")


def local_dataset(uri: str, cache_root: Path | None = None) -> tuple[Path, int]:
    """A local folder holding the dataset at `uri` (itself when local), and bytes downloaded
    (at least the sidecars' when remote: they are fetched on every call)."""
    if not storage.is_remote(uri):
        return Path(storage.normalize(uri)), 0
    manifest = load_manifest(uri)  # refuses an unfinished run before anything is copied
    root = cache_folder(uri, cache_root)

    def wait() -> None:  # say why a rank sits still, then wait for the download
        print(f"data: waiting for another process mirroring {uri}", file=sys.stderr)

    with exclusive(root.with_name(root.name + ".lock"), on_busy=wait):
        return root, _mirror(uri, root, manifest)


def _mirror(uri: str, root: Path, manifest: Manifest) -> int:
    text = json.dumps(manifest.to_dict(), indent=1, sort_keys=True).encode()
    cached_manifest = root / MANIFEST_NAME
    if cached_manifest.is_file() and cached_manifest.read_bytes() != text:
        cached_manifest.unlink()  # the remote dataset was rebuilt: this folder is not it now
    fetched = _fetch(uri, root, TOKENIZER_FILE, None, manifest.tokenizer.sha256)
    listed = set()
    for split in manifest.splits.values():
        for shard in split.shards:
            fetched += _fetch(uri, root, shard.file, shard.num_bytes, shard.sha256)
            fetched += _refresh(uri, root, shard.sidecar_file)
            listed |= {shard.file, shard.sidecar_file}
    for folder in sorted(set(SPLITS) | set(manifest.splits)):
        if (root / folder).is_dir():
            for path in sorted((root / folder).rglob("*")):
                if path.is_file() and path.relative_to(root).as_posix() not in listed:
                    path.unlink()  # `pipeline verify` refuses files the manifest does not list
    if not cached_manifest.is_file():
        storage.write_bytes_atomic(str(cached_manifest), text)
    return fetched


def _fetch(uri: str, root: Path, name: str, size: int | None, sha256: str) -> int:
    local = root / name
    if local.is_file() and check_shard(str(local), num_bytes=size, sha256=sha256).ok:
        return 0
    data = storage.read_bytes(storage.join(uri, name))
    if hashlib.sha256(data).hexdigest() != sha256:
        raise DataError(
            f"{storage.join(uri, name)}: expected sha256 {sha256[:12]}… from the manifest, found "
            f"{hashlib.sha256(data).hexdigest()[:12]}…; the stored dataset is damaged: run "
            "`pipeline verify` on it and rerun `pipeline run` to repair"
        )
    storage.write_bytes_atomic(str(local), data)
    return len(data)


def _refresh(uri: str, root: Path, name: str) -> int:
    """Fetch a small file that has no checksum to check against; rewrite it only if it changed."""
    data = storage.read_bytes(storage.join(uri, name))
    local = root / name
    if not (local.is_file() and local.read_bytes() == data):
        storage.write_bytes_atomic(str(local), data)
    return len(data)
