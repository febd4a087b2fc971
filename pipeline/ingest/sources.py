"""Inputs: list files and check their schema (units are planned in units.py, read in readers.py).

Parquet units are row ranges planned from the footer alone (row-group text sizes), so 26 large
files still give hundreds of units; a row group larger than the target is cut by rows. JSON
lines files (`.jsonl`, `.jsonl.zst`, `.jsonl.gz`) cannot be planned without reading them, so each
is one unit, read as a stream of bounded line batches. A worker never holds a whole file.
"""

from __future__ import annotations

import glob
import json
import os
from dataclasses import dataclass

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.errors import DataError, UsageError, brief
from pipeline.format import storage
from pipeline.ingest.readers import open_input_file, open_lines
from pipeline.ingest.units import SUFFIXES, InputFile, format_of

DATA_SUFFIXES = ", ".join(SUFFIXES)


@dataclass(frozen=True)
class InputListing:
    """The files a run reads (each once, sorted, under the path it was found by, links not
    resolved: a Hugging Face cache names its blobs by hash, not suffix) and those it will not
    read."""

    files: list[str]
    not_read: list[dict[str, str]]  # {"path", "reason"}, for the refusal or the manifest


def list_inputs(inputs: tuple[str, ...]) -> InputListing:
    """Every input file: paths, folders (recursively) and globs.

    A path that exists is taken literally (`corpus[1]`, `wiki [en]`); only one that does not
    is expanded as a glob. In folders, names starting with `_` or `.` are ignored at any depth
    (Spark's `_temporary/`, `_SUCCESS`, `.hive-staging*`, hidden `.part-*`), as
    `pyarrow.dataset` does; links are followed (not those to the folder or its ancestors),
    loops survived, and each real file (hard links too) is read once. Every other file that
    will not be read (another suffix, a dangling link, an unreadable folder) is listed.
    """
    found: list[str] = []
    not_read: list[dict[str, str]] = []
    for item in inputs:
        if storage.is_remote(item):
            found += _list_remote(item, not_read)
            continue
        literal = os.path.lexists(item)
        matches = [item] if literal else sorted(glob.glob(item, recursive=True))
        if not matches:
            tried = " (tried as a glob too: no match)" if glob.has_magic(item) else ""
            raise UsageError(
                f"--input {item}: expected a parquet/jsonl file, a folder or a glob, found "
                f"nothing there{tried}; check the path"
            )
        for match in matches:
            if os.path.isdir(match):
                found += _walk(match, not_read)
            elif not os.path.exists(match):
                raise UsageError(
                    f"--input {match}: expected a file, found a symbolic link to nothing; fix "
                    "the link or leave it out of --input"
                )
            else:
                found.append(os.path.abspath(match))
    files = _once(sorted(set(found)))
    if not files:
        unread = f" ({_describe(not_read)})" if not_read else ""
        raise UsageError(
            f"--input {' '.join(inputs)}: expected {DATA_SUFFIXES} files, found none"
            f"{unread}; point --input at the data files or their folder"
        )
    return InputListing(files=files, not_read=not_read)


def _ignored(name: str) -> bool:
    return name.startswith(("_", "."))


def _walk(folder: str, not_read: list[dict[str, str]]) -> list[str]:
    """The data files below a local folder (links followed, each real folder once), under
    the paths they were found by.

    A link to the folder itself or to one of its ancestors is not followed (it would read the
    whole parent tree before the loop shows); one to an ancestor is listed as not read, as is
    a subfolder that cannot be listed.
    """
    files: list[str] = []
    seen: set[str] = set()
    top = os.path.realpath(folder)

    def unlisted(exc: OSError) -> None:
        reason = f"a folder that cannot be read ({exc.strerror or exc})"
        not_read.append({"path": str(exc.filename), "reason": reason})

    for root, dirs, names in os.walk(folder, followlinks=True, onerror=unlisted):
        real = os.path.realpath(root)
        if real in seen:  # a link loop, or a folder reached twice through links
            dirs[:] = []
            continue
        seen.add(real)
        dirs[:] = [
            d for d in sorted(dirs) if not _ignored(d) and not _links_up(root, d, top, not_read)
        ]
        for name in sorted(n for n in names if not _ignored(n)):
            path = os.path.join(root, name)
            if not os.path.exists(path):
                not_read.append({"path": path, "reason": "a symbolic link to nothing"})
            elif not os.path.isfile(path):
                not_read.append({"path": path, "reason": "not a regular file"})
            elif format_of(name) is None:
                not_read.append({"path": path, "reason": f"not a data file ({DATA_SUFFIXES})"})
            else:
                files.append(os.path.abspath(path))
    return files


def _links_up(root: str, name: str, top: str, not_read: list[dict[str, str]]) -> bool:
    """Is root/name a link to the walked folder `top` or to an ancestor of it? (An ancestor
    is listed as not read: its other files are outside the input.)"""
    path = os.path.join(root, name)
    if not os.path.islink(path):
        return False
    target = os.path.realpath(path)
    if target == top:
        return True  # a loop: every file below it is read through the folder itself
    if top.startswith(target.rstrip("/") + "/"):
        not_read.append({"path": path, "reason": "a link to an ancestor folder"})
        return True
    return False


def _once(paths: list[str]) -> list[str]:
    """One path per local file: paths to one file (links to it, hard links: the same device
    and inode) are read once, under the first of them in sorted order."""
    kept, seen = [], set()
    for path in paths:
        if not storage.is_remote(path):
            st = os.stat(path)
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
        kept.append(path)
    return kept


def _describe(not_read: list[dict[str, str]], most: int = 4) -> str:
    named = "; ".join(f"{e['path']}: {e['reason']}" for e in not_read[:most])
    return named + (f"; and {len(not_read) - most} more" if len(not_read) > most else "")


def refuse_unread(not_read: list[dict[str, str]]) -> None:
    """Under --on-bad-file fail, files a folder holds that will not be read stop the run."""
    if not_read:
        raise DataError(
            f"--input: expected only data files in the input folders, found {len(not_read)} "
            f"that will not be read ({_describe(not_read)}); point --input at the data files "
            "(a path or a glob), or pass --on-bad-file skip to leave them out (listed in the "
            "manifest)"
        )


def _list_remote(uri: str, not_read: list[dict[str, str]]) -> list[str]:
    if format_of(uri):
        if not storage.exists(uri):
            raise UsageError(
                f"--input {uri}: expected an object there, found none; check the bucket and key "
                "(globs are not expanded on object storage: pass the folder instead)"
            )
        return [uri]
    files = []
    base = uri.rstrip("/") + "/"
    for path in storage.list_files(uri, recursive=True):
        if any(_ignored(part) for part in path[len(base) :].split("/")):
            continue
        if format_of(path):
            files.append(path)
        else:
            not_read.append({"path": path, "reason": f"not a data file ({DATA_SUFFIXES})"})
    if not files:
        raise UsageError(
            f"--input {uri}: expected {DATA_SUFFIXES} objects under it, found none; "
            "check the prefix (globs are not expanded on object storage)"
        )
    return files


def describe_input(path: str, text_column: str, id_column: str) -> InputFile:
    """Size, rows and row-group text sizes; checks the columns. Raises DataError if unusable."""
    fmt = format_of(path)
    if fmt is None:
        raise DataError(
            f"{path}: expected a data file ({DATA_SUFFIXES}), found another suffix; "
            "rename it or leave it out of --input"
        )
    if fmt != "parquet":
        _check_jsonl_fields(path, fmt, text_column)
        return InputFile(path=path, format=fmt, num_bytes=storage.size_of(path), num_rows=None)
    meta, num_bytes = _parquet_metadata(path)
    if meta.num_rows == 0:
        raise EmptyInputError(f"{path}: 0 rows (counted and left out)")
    schema = meta.schema.to_arrow_schema()
    _check_column(path, schema, text_column, "text", "--text-column")
    if id_column not in schema.names:
        raise DataError(
            f"{path}: expected an id column {id_column!r}, found columns {schema.names}; "
            "pass --id-column with the column that names each document"
        )
    text_index = schema.get_field_index(text_column)
    rows, text_bytes = [], []
    for i in range(meta.num_row_groups):
        group = meta.row_group(i)
        rows.append(group.num_rows)
        text_bytes.append(group.column(text_index).total_uncompressed_size)
    return InputFile(
        path=path,
        format=fmt,
        num_bytes=num_bytes,
        num_rows=meta.num_rows,
        row_group_rows=tuple(rows),
        row_group_text_bytes=tuple(text_bytes),
    )


def _check_jsonl_fields(path: str, fmt: str, text_column: str) -> None:
    """The first object of a JSON lines file must have the text field (columns are only
    checked this far: later lines without it are counted as null_text)."""
    try:
        with open_lines(path, fmt) as lines:
            first = next((line for line in lines if line.strip()), b"")
            obj = json.loads(first) if first else {}
    except (OSError, EOFError, ValueError, zstandard.ZstdError) as exc:
        raise DataError(
            f"{path}: expected JSON lines, found a file whose first line does not read "
            f"({brief(exc)}); replace it, or pass --on-bad-file skip to leave it out"
        ) from exc
    if not isinstance(obj, dict):
        found = "an array" if isinstance(obj, list) else f"a {type(obj).__name__}"
        raise DataError(
            f"{path}: expected JSON lines (one object per line), found {found} on the first "
            "line (a JSON document, not JSON lines?); convert it, e.g. jq -c '.[]', or pass "
            "--on-bad-file skip to leave it out"
        )
    if text_column not in obj:
        keys = sorted(obj)
        raise DataError(
            f"{path}: expected a {text_column!r} field in each JSON object, found {keys} in "
            "the first line; pass --text-column with the field that holds the text"
        )


def _parquet_metadata(path: str) -> tuple[pq.FileMetaData, int]:
    """The footer and the file's size, from one open."""
    try:
        with open_input_file(path) as f:
            return pq.ParquetFile(f).metadata, f.size()
    except (pa.ArrowInvalid, OSError) as exc:
        raise DataError(
            f"{path}: expected a parquet file, found one whose footer does not read "
            f"({brief(exc, 120)}); the file is truncated or not parquet: replace it, or "
            "pass --on-bad-file skip to leave it out"
        ) from exc


def _check_column(path: str, schema: pa.Schema, name: str, role: str, flag: str) -> None:
    if name not in schema.names:
        raise DataError(
            f"{path}: expected a {role} column {name!r}, found columns {schema.names}; "
            f"pass {flag} with the right column"
        )
    typ = schema.field(name).type
    if not is_text_type(typ):
        raise DataError(
            f"{path}: expected column {name!r} to hold text (string, large_string, string_view "
            f"or dictionary of strings), found {typ}; pass {flag} with a text column"
        )


def is_text_type(typ: pa.DataType) -> bool:
    """What users' writers produce for text: pandas' category and polars' Categorical are
    dictionary<string>, polars and DuckDB may write string_view."""
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    return pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_string_view(typ)


class EmptyInputError(DataError):
    """A file without rows: nothing to lose, so it is left out and listed, never refused."""
