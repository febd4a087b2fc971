"""Inputs: listing, schema checks, unit planning from metadata, streaming readers."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import zstandard
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import DataError, UsageError
from pipeline.ingest.readers import is_invalid, read_documents
from pipeline.ingest.sources import describe_input, list_inputs
from pipeline.ingest.units import (
    MIN_UNIT_BYTES,
    MIN_UNITS,
    InputFile,
    group_bytes,
    plan_units,
)
from tests.conftest import DICTWIKI


@given(
    groups=st.lists(
        st.tuples(st.integers(0, 5000), st.integers(0, 10_000_000)), min_size=0, max_size=20
    ),
    unit_bytes=st.integers(1, 20_000_000),
)
def test_units_cover_every_row_once_in_order(
    groups: list[tuple[int, int]], unit_bytes: int
) -> None:
    rows = tuple(g[0] for g in groups)
    files = [
        InputFile(
            path=name,
            format="parquet",
            num_bytes=1,
            num_rows=sum(rows),
            row_group_rows=rows,
            row_group_text_bytes=tuple(g[1] for g in groups),
        )
        for name in ("a.parquet", "b.parquet", "c.parquet")
    ]
    units = plan_units(files, unit_bytes)
    parts = [p for u in units for p in u.parts]
    assert [p.path for p in parts] == sorted(p.path for p in parts), "files in order"
    for f in files:
        covered = [(p.row_start, p.row_end) for p in parts if p.path == f.path]
        assert covered[0][0] == 0 and covered[-1][1] == sum(rows)
        for (_, end), (start, _) in itertools.pairwise(covered):
            assert end == start
        if sum(f.row_group_text_bytes) >= unit_bytes:
            assert all(len(u.parts) == 1 for u in units if u.path == f.path), "cut, not joined"
    assert [u.index for u in units] == list(range(len(units)))


def _files(count: int, text_bytes: int) -> list[InputFile]:
    return [
        InputFile(
            path=f"part-{k:05d}.parquet",
            format="parquet",
            num_bytes=1,
            num_rows=1000,
            row_group_rows=(500, 500),
            row_group_text_bytes=(text_bytes // 2, text_bytes // 2),
        )
        for k in range(count)
    ]


@given(count=st.integers(1, 200), text_bytes=st.integers(2, 1 << 30))
def test_units_are_smaller_only_where_the_corpus_is_small(count: int, text_bytes: int) -> None:
    files = _files(count, text_bytes)
    flag = 32 << 20
    size = group_bytes(files, flag)
    assert min(flag, MIN_UNIT_BYTES) <= size <= flag
    total = count * (text_bytes // 2 * 2)
    if total >= MIN_UNITS * flag:
        assert size == flag, "a large corpus is planned with --unit-bytes as given"
    else:
        assert size == max(MIN_UNIT_BYTES, total // MIN_UNITS)
    assert group_bytes(files, 4096) == 4096, "a smaller --unit-bytes is kept"


def test_a_small_corpus_of_many_files_is_not_one_unit() -> None:
    """dictwiki x8 as the benchmark lays it out: 50 MB of text in 32 files. Grouped up to
    32 MiB it was 2 units, and one worker of two idled for much of the run."""
    assert len(plan_units(_files(32, 1_600_000), 32 << 20)) == 32
    assert len(plan_units(_files(1000, 300), 32 << 20)) == 1, "tiny files still share a unit"
    assert len(plan_units(_files(1, 800_000), 1 << 30)) == 1, "a file below the flag: one unit"


def test_dictwiki_plans_more_units_than_files() -> None:
    files = [describe_input(p, "text", "id") for p in list_inputs((str(DICTWIKI),)).files]
    assert [f.num_rows for f in files] == [3830] * 4
    units = plan_units(files, 256 * 1024)
    assert len(units) > 4 * 3, "row groups are cut so parallelism is not capped by files"
    total = sum(len(b.texts) for u in units for b in read_documents(u, "text", "id"))
    assert total == 15_320


def test_jsonl_and_zst_stream_with_ids_and_skips(tmp_path: Path) -> None:
    lines = [
        json.dumps({"id": "a", "text": "first"}).encode(),
        json.dumps({"text": "no id here"}).encode(),
        json.dumps({"id": "c", "text": None}).encode(),
        b'{"id": "d", "text": "bad \xff utf8"}',
        b'{"id": "e", "text": "lone \\ud800 surrogate"}',
        b"",
        json.dumps({"id": 7, "text": "numeric id"}).encode(),
    ]
    plain = tmp_path / "a.jsonl"
    plain.write_bytes(b"\n".join(lines) + b"\n")
    packed = tmp_path / "b.jsonl.zst"
    packed.write_bytes(zstandard.ZstdCompressor().compress(plain.read_bytes()))
    for path in (plain, packed):
        files = [describe_input(str(path), "text", "id")]
        (unit,) = plan_units(files, 1 << 20)
        batches = list(read_documents(unit, "text", "id"))
        ids = [i for b in batches for i in b.ids]
        texts = [t for b in batches for t in b.texts]
        assert ids[0] == "a" and ids[1] is None and ids[-1] == "7"
        assert texts[0] == "first" and texts[2] is None
        assert is_invalid(texts[3]) and is_invalid(texts[4])
        assert len(texts) == 6


def test_malformed_json_line_names_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1, "text": "ok"}\n{broken\n')
    (unit,) = plan_units([describe_input(str(path), "text", "id")], 1 << 20)
    with pytest.raises(DataError, match=r"x.jsonl:2: expected one JSON object per line"):
        list(read_documents(unit, "text", "id"))


def test_jsonl_text_not_a_string(tmp_path: Path) -> None:
    path = tmp_path / "x.jsonl"
    path.write_text('{"id": 1, "text": 5}\n')
    (unit,) = plan_units([describe_input(str(path), "text", "id")], 1 << 20)
    with pytest.raises(DataError, match=r"x.jsonl:1: expected 'text' to be a string, found int"):
        list(read_documents(unit, "text", "id"))


def test_missing_input_path(tmp_path: Path) -> None:
    with pytest.raises(
        UsageError, match=r"nope: expected a parquet/jsonl file, a folder or a glob"
    ):
        list_inputs((str(tmp_path / "nope"),))


def test_folder_without_data_files(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(
        UsageError,
        match=r"expected .parquet, .jsonl, .jsonl.zst, .jsonl.gz, .json.gz files, found "
        r"none \(.*readme.txt: not a data file",
    ):
        list_inputs((str(tmp_path),))


def test_glob_input() -> None:
    files = list_inputs((str(DICTWIKI / "train-0000[01]-*.parquet"),)).files
    assert [Path(f).name[:11] for f in files] == ["train-00000", "train-00001"]


def test_not_parquet_and_truncated_parquet(tmp_path: Path) -> None:
    fake = tmp_path / "fake.parquet"
    fake.write_text("this is not parquet")
    with pytest.raises(DataError, match=r"fake.parquet: expected a parquet file, found one whose"):
        describe_input(str(fake), "text", "id")
    data = (DICTWIKI / "train-00000-of-00004.parquet").read_bytes()
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"cut.parquet: .* truncated or not parquet"):
        describe_input(str(cut), "text", "id")


def test_text_column_missing_or_not_string(tmp_path: Path) -> None:
    path = tmp_path / "t.parquet"
    pq.write_table(pa.table({"id": ["1"], "body": ["x"], "n": [3]}), path)
    with pytest.raises(DataError, match=r"expected a text column 'text', found columns"):
        describe_input(str(path), "text", "id")
    with pytest.raises(DataError, match=r"expected column 'n' to hold text .*, found int64"):
        describe_input(str(path), "n", "id")
    with pytest.raises(DataError, match=r"expected an id column 'doc', found columns"):
        describe_input(str(path), "body", "doc")


def test_invalid_utf8_in_parquet_is_marked(tmp_path: Path) -> None:
    """Arrow does not validate UTF-8 when it reads binary cast unsafely to string."""
    path = tmp_path / "u.parquet"
    texts = pa.array([b"good", b"bad \xff", None], pa.binary()).view(pa.string())
    pq.write_table(pa.table({"id": ["1", "2", "3"], "text": texts}), path)
    (unit,) = plan_units([describe_input(str(path), "text", "id")], 1 << 20)
    (batch,) = list(read_documents(unit, "text", "id"))
    assert batch.texts[0] == "good" and is_invalid(batch.texts[1]) and batch.texts[2] is None


@pytest.mark.parametrize(
    ("first_line", "found"),
    [
        ('[{"id": "1", "text": "One."}, {"id": "2", "text": "Two."}]', "an array"),
        ('"just a string"', "a str"),
    ],
)
def test_a_json_document_is_not_taken_for_json_lines(
    tmp_path: Path, first_line: str, found: str
) -> None:
    import gzip

    path = tmp_path / "dump.json.gz"
    path.write_bytes(gzip.compress((first_line + "\n").encode()))
    with pytest.raises(DataError, match=rf"dump.json.gz: expected JSON lines \(one object per "
                       rf"line\), found {found} on the first line .*jq -c"):  # fmt: skip
        describe_input(str(path), "text", "id")
