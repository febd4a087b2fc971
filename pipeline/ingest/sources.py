"""Inputs: list files and check their schema (units are planned in units.py, read in readers.py).

Parquet units are row ranges planned from the footer alone (row-group text sizes), so 26 large
files still give hundreds of units; a row group larger than the target is cut by rows. JSON
lines files (`.jsonl`, `.jsonl.zst`) cannot be planned without reading them, so each is one
unit, read as a stream of bounded line batches. A worker never holds a whole file.
"""

from __future__ import annotations

import glob
import json

import pyarrow as pa
import pyarrow.parquet as pq
import zstandard

from pipeline.errors import DataError, UsageError, brief
from pipeline.format import storage
from pipeline.ingest.readers import open_lines
from pipeline.ingest.units import InputFile, format_of


def list_inputs(inputs: tuple[str, ...]) -> list[str]:
    """Every input file: paths, folders (recursively) and globs; sorted, without repeats."""
    found: list[str] = []
    for item in inputs:
        if storage.is_remote(item):
            found += _list_remote(item)
            continue
        matches = sorted(glob.glob(item, recursive=True)) if glob.has_magic(item) else [item]
        if not matches or not storage.exists(matches[0]):
            raise UsageError(
                f"--input {item}: expected a parquet/jsonl file, a folder or a glob, found "
                "nothing there; check the path"
            )
        for match in matches:
            if storage.is_dir(match):
                found += [p for p in storage.list_files(match, recursive=True) if format_of(p)]
            else:
                found.append(storage.normalize(match))
    files = sorted(set(found))
    if not files:
        raise UsageError(
            f"--input {' '.join(inputs)}: expected .parquet, .jsonl or .jsonl.zst files, "
            "found none; point --input at the data files or their folder"
        )
    return files


def _list_remote(uri: str) -> list[str]:
    if format_of(uri):
        if not storage.exists(uri):
            raise UsageError(
                f"--input {uri}: expected an object there, found none; check the bucket and key "
                "(globs are not expanded on object storage: pass the folder instead)"
            )
        return [uri]
    files = [p for p in storage.list_files(uri, recursive=True) if format_of(p)]
    if not files:
        raise UsageError(
            f"--input {uri}: expected .parquet or .jsonl(.zst) objects under it, found none; "
            "check the prefix (globs are not expanded on object storage)"
        )
    return files


def describe_input(path: str, text_column: str, id_column: str) -> InputFile:
    """Size, rows and row-group text sizes; checks the columns. Raises DataError if unusable."""
    fmt = format_of(path)
    if fmt is None:
        raise DataError(
            f"{path}: expected a .parquet, .jsonl or .jsonl.zst file, found another suffix; "
            "rename it or leave it out of --input"
        )
    num_bytes = storage.size_of(path)
    if fmt != "parquet":
        _check_jsonl_fields(path, fmt, text_column)
        return InputFile(path=path, format=fmt, num_bytes=num_bytes, num_rows=None)
    meta = _parquet_metadata(path)
    schema = meta.schema.to_arrow_schema()
    _check_column(path, schema, text_column, "text", "--text-column")
    if id_column not in schema.names:
        raise DataError(
            f"{path}: expected an id column {id_column!r}, found columns {schema.names}; "
            "pass --id-column with the column that names each document"
        )
    id_type = schema.field(id_column).type
    if not (pa.types.is_string(id_type) or pa.types.is_large_string(id_type)
            or pa.types.is_integer(id_type)):  # fmt: skip
        raise DataError(
            f"{path}: expected the id column {id_column!r} to hold strings or integers, found "
            f"{id_type}; pass --id-column with a column that names each document"
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
    except (OSError, ValueError, zstandard.ZstdError) as exc:
        raise DataError(
            f"{path}: expected JSON lines, found a file whose first line does not read "
            f"({brief(exc)}); replace it, or pass --on-bad-file skip to leave it out"
        ) from exc
    if not isinstance(obj, dict) or text_column not in obj:
        keys = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
        raise DataError(
            f"{path}: expected a {text_column!r} field in each JSON object, found {keys} in "
            "the first line; pass --text-column with the field that holds the text"
        )


def _parquet_metadata(path: str) -> pq.FileMetaData:
    fs, inner = storage.resolve(path)
    try:
        with fs.open_input_file(inner) as f:
            return pq.ParquetFile(f).metadata
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
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        raise DataError(
            f"{path}: expected column {name!r} to be a string, found {typ}; "
            f"pass {flag} with a string column"
        )
