"""Work units: input files as their metadata describes them, and row ranges planned over them.

Pure: no I/O. `sources.py` describes the files (from parquet footers), `readers.py` streams a
unit's rows, and the runners hand units to `run/process.py`. A unit is a row range of one file,
or a run of consecutive whole parquet files each smaller than `--unit-bytes` (so 1,000 files of
3 rows cost what their bytes cost, not 1,000 units and 4,000 files), numbered in input order:
unit numbers (and the shard names derived from them) depend on the inputs and `--unit-bytes`
only, never on the number of workers.

Small files are grouped up to `--unit-bytes`, or less where the corpus is small against it
(`group_bytes`): grouped up to 32 MiB, dictwiki x8 (50 MB of text in 32 files) made 2 units,
and one worker of two idled for much of the run (1.55 of 2 cores busy, on an idle machine).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

SUFFIXES = {
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".jsonl.zst": "jsonl.zst",
    ".jsonl.gz": "jsonl.gz",
    ".json.gz": "jsonl.gz",  # how dataset dumps ship JSON lines
}


@dataclass(frozen=True, kw_only=True)
class InputFile:
    path: str
    format: str
    num_bytes: int
    num_rows: int | None  # None for JSON lines (counted while reading)
    row_group_rows: tuple[int, ...] = ()
    row_group_text_bytes: tuple[int, ...] = ()


@dataclass(frozen=True, kw_only=True)
class UnitPart:
    """Rows row_start..row_end of one file (row_end None: to the end of the file)."""

    path: str
    row_start: int
    row_end: int | None

    def __post_init__(self) -> None:
        if self.row_end is not None and self.row_end < self.row_start:
            raise ValueError(f"{self.path}: row_end {self.row_end} < {self.row_start}")


@dataclass(frozen=True, kw_only=True)
class WorkUnit:
    index: int
    path: str
    format: str
    row_start: int
    row_end: int | None  # None: to the end of the file
    text_bytes: int
    more: tuple[UnitPart, ...] = ()  # further whole files of the same format, read in order

    def __post_init__(self) -> None:
        if self.row_end is not None and self.row_end < self.row_start:
            raise ValueError(f"unit {self.index}: row_end {self.row_end} < {self.row_start}")

    @property
    def parts(self) -> tuple[UnitPart, ...]:
        first = UnitPart(path=self.path, row_start=self.row_start, row_end=self.row_end)
        return (first, *self.more)

    def to_dict(self) -> dict[str, object]:
        record: dict[str, object] = {
            "index": self.index,
            "path": self.path,
            "row_start": self.row_start,
            "row_end": self.row_end,
        }
        if self.more:
            record["more"] = [
                {"path": p.path, "row_start": p.row_start, "row_end": p.row_end} for p in self.more
            ]
        return record


def format_of(path: str) -> str | None:
    """The input format a file name says (`b.PARQUET` too: suffixes ignore case), or None."""
    name = path.lower()
    for suffix, fmt in sorted(SUFFIXES.items(), key=lambda kv: -len(kv[0])):
        if name.endswith(suffix):
            return fmt
    return None


# At least this many units where the corpus allows: enough to keep 2-64 workers busy to the end
# of a run; none smaller than MIN_UNIT_BYTES, so a unit's fixed cost (two shard files, two
# sidecars, fsyncs: milliseconds) stays small against its tokenizing (~1 s per MiB and core).
MIN_UNITS = 64
MIN_UNIT_BYTES = 1 << 20


def group_bytes(files: list[InputFile], unit_bytes: int) -> int:
    """How much text a group of small files may hold: `unit_bytes`, or less where the corpus
    would give fewer than MIN_UNITS units (never below MIN_UNIT_BYTES, nor above `unit_bytes`).
    It depends on the inputs alone, so the output stays the same for any worker count."""
    total = sum(sum(f.row_group_text_bytes) or f.num_bytes for f in files)
    return min(unit_bytes, max(MIN_UNIT_BYTES, total // MIN_UNITS))


def plan_units(files: list[InputFile], unit_bytes: int) -> list[WorkUnit]:
    """Consecutive row ranges of about unit_bytes of text each. A parquet file with less text
    than that joins the consecutive small files before it in one unit, up to `group_bytes`."""
    group_limit = group_bytes(files, unit_bytes)
    units: list[WorkUnit] = []
    group: list[InputFile] = []
    grouped = 0

    def close_group() -> None:
        nonlocal grouped
        if group:
            units.append(_files_unit(len(units), group))
            group.clear()
            grouped = 0

    for f in files:
        if f.format == "parquet" and sum(f.row_group_text_bytes) < unit_bytes:
            group.append(f)
            grouped += sum(f.row_group_text_bytes)
            if grouped >= group_limit:
                close_group()
            continue
        close_group()
        if f.format != "parquet":
            units.append(
                WorkUnit(
                    index=len(units),
                    path=f.path,
                    format=f.format,
                    row_start=0,
                    row_end=None,
                    text_bytes=f.num_bytes,
                )
            )
            continue
        pieces: list[tuple[int, int, int]] = []  # (row_start, row_end, text bytes)
        row = 0
        for n_rows, n_bytes in zip(f.row_group_rows, f.row_group_text_bytes, strict=True):
            cuts = max(1, min(n_rows, math.ceil(n_bytes / unit_bytes)))
            for k in range(cuts):
                lo, hi = row + n_rows * k // cuts, row + n_rows * (k + 1) // cuts
                pieces.append((lo, hi, n_bytes * (hi - lo) // max(n_rows, 1)))
            row += n_rows
        start, acc = None, 0
        for lo, hi, n_bytes in pieces:
            start = lo if start is None else start
            acc += n_bytes
            if acc >= unit_bytes:
                units.append(_parquet_unit(len(units), f, start, hi, acc))
                start, acc = None, 0
        if start is not None:
            units.append(_parquet_unit(len(units), f, start, row, acc))
        if not pieces:
            units.append(_parquet_unit(len(units), f, 0, 0, 0))
    close_group()
    return units


def _files_unit(index: int, files: list[InputFile]) -> WorkUnit:
    """Whole parquet files, in order, as one unit (one file: the same unit as before)."""
    first, rest = files[0], files[1:]
    return WorkUnit(
        index=index,
        path=first.path,
        format="parquet",
        row_start=0,
        row_end=first.num_rows,
        text_bytes=sum(sum(f.row_group_text_bytes) for f in files),
        more=tuple(UnitPart(path=f.path, row_start=0, row_end=f.num_rows) for f in rest),
    )


def _parquet_unit(index: int, f: InputFile, lo: int, hi: int, text_bytes: int) -> WorkUnit:
    return WorkUnit(
        index=index, path=f.path, format="parquet", row_start=lo, row_end=hi, text_bytes=text_bytes
    )
