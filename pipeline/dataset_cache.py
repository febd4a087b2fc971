"""A local copy of a finished dataset that lives on object storage, checked by sha256.

The trainer reads shards with memory maps, so an `s3://` dataset is first mirrored into a
cache folder (default `~/.cache/mlm-pipeline/<bucket/path>`): the manifest, the tokenizer, and
every shard the manifest lists. A shard already in the cache is kept when its size and sha256
match the manifest, otherwise fetched again; every download is checked before it is published
(atomic rename), so an interrupted download never leaves a file that looks finished. The
manifest is copied last, like in a run.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline import storage
from pipeline.errors import DataError
from pipeline.manifest import MANIFEST_NAME, load_manifest
from pipeline.process import TOKENIZER_FILE

CACHE_ENV = "PIPELINE_CACHE_DIR"


def default_cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV, Path.home() / ".cache" / "mlm-pipeline"))


def local_dataset(uri: str, cache_root: Path | None = None) -> tuple[Path, int]:
    """A local folder holding the dataset at `uri` (itself when local), and bytes fetched."""
    if not storage.is_remote(uri):
        return Path(storage.normalize(uri)), 0
    manifest = load_manifest(uri)  # refuses an unfinished run before anything is copied
    root = (cache_root or default_cache_root()) / uri.split("://", 1)[1].strip("/")
    fetched = 0
    tok_sha = manifest["tokenizer"]["sha256"]
    fetched += _fetch(uri, root, TOKENIZER_FILE, None, tok_sha)
    for split in manifest["splits"].values():
        for shard in split["shards"]:
            fetched += _fetch(uri, root, shard["file"], shard["num_bytes"], shard["sha256"])
            sidecar = shard["file"].removesuffix(".arrow") + ".json"  # small; verify reads it
            if not (root / sidecar).is_file():
                data = storage.read_bytes(storage.join(uri, sidecar))
                storage.write_bytes_atomic(str(root / sidecar), data)
                fetched += len(data)
    storage.write_bytes_atomic(
        str(root / MANIFEST_NAME), json.dumps(manifest, indent=1, sort_keys=True).encode()
    )
    return root, fetched


def _fetch(uri: str, root: Path, name: str, size: int | None, sha256: str) -> int:
    local = root / name
    fresh = local.is_file() and (size is None or local.stat().st_size == size)
    if fresh and _sha256_file(local) == sha256:
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


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
