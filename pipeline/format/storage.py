"""Where bytes live: local paths or object-store URIs (s3://...), through pyarrow.fs.

Every write of a finished file is atomic: locally a temporary name in the same folder, fsync,
then rename; on an object store the object only appears when its upload completes (a PUT is
atomic), so there is nothing to rename. Credentials come from the usual AWS variables; an
S3-compatible endpoint from `PIPELINE_S3_ENDPOINT` (set by `--storage-endpoint`) or
`AWS_ENDPOINT_URL`.
"""

from __future__ import annotations

import functools
import hashlib
import os
import posixpath
from pathlib import Path
from urllib.parse import urlparse

import pyarrow.fs as pafs

ENDPOINT_ENV = "PIPELINE_S3_ENDPOINT"
ENDPOINT_HELP = (
    "endpoint of an S3-compatible store for s3:// paths, e.g. http://127.0.0.1:9000 "
    "(default: AWS's, or AWS_ENDPOINT_URL from the environment)"
)


def use_endpoint(url: str | None) -> None:
    """Apply a command's `--storage-endpoint` (every command that reads or writes s3:// takes
    it); through the environment, so that Ray workers and forked processes see it too."""
    if url:
        os.environ[ENDPOINT_ENV] = url


def is_remote(uri: str) -> bool:
    return "://" in uri and not uri.startswith("file://")


def normalize(uri: str) -> str:
    """Absolute local path, or the URI unchanged (without a trailing slash)."""
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    if is_remote(uri):
        return uri.rstrip("/")
    return str(Path(uri).expanduser().resolve())


def join(base: str, *parts: str) -> str:
    if is_remote(base):
        return posixpath.join(base.rstrip("/"), *parts)
    return str(Path(base, *parts))


@functools.cache
def _s3(endpoint: str | None) -> pafs.FileSystem:
    if not endpoint:
        return pafs.S3FileSystem()
    parsed = urlparse(endpoint)
    return pafs.S3FileSystem(
        endpoint_override=parsed.netloc or endpoint,
        scheme=parsed.scheme or "https",
        allow_bucket_creation=False,
    )


def resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and the path inside it."""
    if not is_remote(uri):
        return pafs.LocalFileSystem(), normalize(uri)
    parsed = urlparse(uri)
    if parsed.scheme in ("s3", "s3a"):
        endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
        return _s3(endpoint), f"{parsed.netloc}{parsed.path}".rstrip("/")
    return pafs.FileSystem.from_uri(uri)


def read_bytes(uri: str) -> bytes:
    fs, path = resolve(uri)
    with fs.open_input_stream(path, compression=None) as f:
        return f.read()


def sha256_of(uri: str) -> str:
    """sha256 of a file, streamed in 1 MiB chunks (no whole-file read)."""
    fs, path = resolve(uri)
    digest = hashlib.sha256()
    with fs.open_input_stream(path, compression=None) as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def write_bytes_atomic(uri: str, data: bytes) -> None:
    if is_remote(uri):
        fs, path = resolve(uri)
        with fs.open_output_stream(path) as f:
            f.write(data)
        return
    path = Path(normalize(uri))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)


def fsync_path(path: Path) -> None:
    """fsync a file or a folder (a folder's fsync makes a rename in it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def file_info(uri: str) -> pafs.FileInfo:
    fs, path = resolve(uri)
    return fs.get_file_info(path)


def mtime_ns(uri: str) -> int | None:
    return file_info(uri).mtime_ns


def exists(uri: str) -> bool:
    return file_info(uri).type != pafs.FileType.NotFound


def is_dir(uri: str) -> bool:
    return file_info(uri).type == pafs.FileType.Directory


def size_of(uri: str) -> int:
    return int(file_info(uri).size)


def list_files(uri: str, recursive: bool = False) -> list[str]:
    """Full URIs/paths of the files below a folder, sorted."""
    fs, path = resolve(uri)
    selector = pafs.FileSelector(path, recursive=recursive, allow_not_found=True)
    infos = fs.get_file_info(selector)
    prefix = uri.split("://", 1)[0] + "://" if is_remote(uri) else ""
    return sorted(prefix + i.path for i in infos if i.type == pafs.FileType.File)


class ConditionalWriteUnsupported(OSError):
    """The store (or the installed client) cannot create an object only if it is absent."""


def create_if_absent(uri: str, data: bytes) -> bool:
    """Create the file only if nothing is there: True if created, False if it existed.

    Locally O_CREAT|O_EXCL; on S3 a PUT with `If-None-Match: *` (AWS since 2024, MinIO,
    moto), through boto3 because pyarrow's S3 client cannot send it. Raises
    ConditionalWriteUnsupported where the store or client cannot do it.
    """
    if not is_remote(uri):
        path = Path(normalize(uri))
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return True
    parsed = urlparse(uri)
    if parsed.scheme not in ("s3", "s3a"):
        raise ConditionalWriteUnsupported(f"{uri}: no conditional writes for {parsed.scheme}://")
    try:
        import boto3
        import botocore.exceptions
    except ImportError as exc:
        raise ConditionalWriteUnsupported(f"{uri}: boto3 is not installed") from exc
    endpoint = os.environ.get(ENDPOINT_ENV) or os.environ.get("AWS_ENDPOINT_URL")
    client = boto3.client("s3", endpoint_url=endpoint or None)
    try:
        client.put_object(
            Bucket=parsed.netloc, Key=parsed.path.lstrip("/"), Body=data, IfNoneMatch="*"
        )
    except botocore.exceptions.ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("PreconditionFailed", "ConditionalRequestConflict"):
            return False
        if code in ("NotImplemented", "InvalidArgument", "501"):
            raise ConditionalWriteUnsupported(f"{uri}: the store answered {code}") from exc
        raise OSError(f"{uri}: {code or exc}") from exc
    except botocore.exceptions.ParamValidationError as exc:  # a botocore before 1.35
        raise ConditionalWriteUnsupported(f"{uri}: botocore too old for If-None-Match") from exc
    return True


def remove(uri: str) -> None:
    fs, path = resolve(uri)
    if fs.get_file_info(path).type == pafs.FileType.File:
        fs.delete_file(path)


def make_dirs(uri: str) -> None:
    if not is_remote(uri):
        Path(normalize(uri)).mkdir(parents=True, exist_ok=True)
