"""The CLI's contract for bad input: one clear line on stderr, exit 2 (usage) or 1 (data),
and nothing published."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from pipeline.commands import cli
from pipeline.format.manifest import load_manifest
from tests.conftest import BERT, DICTWIKI, UNIGRAM, damage_a_data_page


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = cli.main(["run", "--backend", "local", "--quiet", *argv])
    return code, capsys.readouterr().err


@pytest.fixture
def data(tmp_path: Path, dictwiki_one_file: Path) -> Path:
    folder = tmp_path / "data"
    shutil.copytree(dictwiki_one_file, folder)
    return folder


@pytest.mark.parametrize(
    ("make_args", "code", "match"),
    [
        (
            lambda d, t: ["--input", str(t / "nope"), "--tokenizer", str(BERT)],
            2,
            "nope: expected a parquet/jsonl file, a folder or a glob, found nothing",
        ),
        (
            lambda d, t: ["--input", str(d), "--tokenizer", str(t / "tok")],
            2,
            "tok: expected a tokenizer.json or a model folder, found nothing",
        ),
        (
            lambda d, t: [
                "--input",
                str(d),
                "--tokenizer",
                str(d / "train-00000-of-00004.parquet"),
            ],
            2,
            "expected a Hugging Face tokenizer.json, found a file that does not load",
        ),
        (
            lambda d, t: ["--input", str(d), "--tokenizer", str(UNIGRAM), "--dtype", "uint16"],
            2,
            "--dtype uint16 .* expected a vocabulary of at most 65536 ids, found 128001",
        ),
        (
            lambda d, t: ["--input", str(d), "--tokenizer", str(BERT), "--block-size", "4"],
            2,
            "--block-size: expected 8 to 65536, found 4",
        ),
        (
            lambda d, t: ["--input", str(d), "--tokenizer", str(BERT), "--block-size", "70000"],
            2,
            "--block-size: expected 8 to 65536, found 70000",
        ),
        (
            lambda d, t: [
                "--input",
                str(d),
                "--tokenizer",
                str(BERT),
                "--validation-fraction",
                "1",
            ],
            2,
            r"expected a number in \[0, 1\)",
        ),
        (
            lambda d, t: ["--input", str(d), "--tokenizer", str(BERT), "--tokenizer-cache", "-1"],
            2,
            "--tokenizer-cache: expected 0 to 100,000,000 words, found -1",
        ),
        (
            lambda d, t: ["--input", str(d), "--tokenizer", str(BERT), "--text-column", "body"],
            1,
            "expected a text column 'body', found columns",
        ),
        (
            lambda d, t: [
                "--input",
                str(d),
                "--tokenizer",
                str(BERT),
                "--text-column",
                "title",
                "--id-column",
                "nope",
            ],
            1,
            "expected an id column 'nope'",
        ),
    ],
)
def test_bad_input_is_one_line_and_the_right_exit_code(
    tmp_path: Path,
    data: Path,
    capsys: pytest.CaptureFixture[str],
    make_args,
    code: int,
    match: str,
) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "out"
    got, err = _run(capsys, *make_args(data, tmp_path), "--output", str(out))
    assert got == code, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    assert re.search(match, lines[0]), lines[0]
    assert not (out / "manifest.json").exists()


def test_output_inside_input_exits_2(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(
        capsys, "--input", str(data), "--tokenizer", str(BERT), "--output", str(data / "shards")
    )
    assert code == 2 and "expected a folder outside the input folder" in err


def test_truncated_parquet_exits_1_and_skip_lists_it(
    tmp_path: Path, data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = data / "train-00000-of-00004.parquet"
    (data / "cut.parquet").write_bytes(src.read_bytes()[:100_000])
    code, err = _run(
        capsys, "--input", str(data), "--tokenizer", str(BERT), "--output", str(tmp_path / "o1")
    )
    assert code == 1 and "cut.parquet: expected a parquet file" in err
    assert "--on-bad-file skip" in err, "the message says how to get past it"
    code, err = _run(
        capsys,
        "--input",
        str(data),
        "--tokenizer",
        str(BERT),
        "--output",
        str(tmp_path / "o2"),
        "--on-bad-file",
        "skip",
    )
    assert code == 0, err
    manifest = load_manifest(str(tmp_path / "o2"))
    assert [Path(s.path).name for s in manifest.skipped_files] == ["cut.parquet"]
    assert manifest.splits["train"].num_blocks > 0


def test_invalid_text_is_skipped_and_counted_end_to_end(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "jsonl"
    folder.mkdir()
    lines = [
        json.dumps({"id": str(i), "text": f"Article number {i} about computing."}).encode()
        for i in range(50)
    ]
    lines += [
        b'{"id": "bad1", "text": "caf\xe9 latin-1"}',
        b'{"id": "bad2", "text": "\\udc80"}',
        b'{"id": "n", "text": null}',
        b'{"id": "e", "text": ""}',
    ]
    (folder / "a.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    code, err = _run(
        capsys,
        "--input",
        str(folder),
        "--tokenizer",
        str(BERT),
        "--output",
        str(tmp_path / "out"),
        "--validation-fraction",
        "0",
        "--block-size",
        "16",
    )
    assert code == 0, err
    ledger = json.loads((tmp_path / "out" / "manifest.json").read_text())["splits"]["train"][
        "ledger"
    ]
    assert ledger["skipped"] == {"null_text": 1, "empty_text": 1, "invalid_utf8": 2}
    assert ledger["num_documents"] == 54 and ledger["num_documents_packed"] == 50
    assert ledger["num_block_tokens"] > 0


def test_a_different_run_in_the_output_exits_2(
    tmp_path: Path, dictwiki_one_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        "--input",
        str(dictwiki_one_file),
        "--tokenizer",
        str(BERT),
        "--output",
        str(tmp_path / "out"),
        "--unit-bytes",
        str(1 << 30),
    ]
    assert _run(capsys, *args)[0] == 0
    code, err = _run(capsys, *args, "--packing", "concat")
    assert code == 2 and "packing: 'framed' there, 'concat' now" in err and "--overwrite" in err
    assert _run(capsys, *args, "--packing", "concat", "--overwrite")[0] == 0


def test_damaged_data_page_fails_clearly_or_is_skipped_and_listed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    src = DICTWIKI / "train-00000-of-00004.parquet"
    shutil.copy(src, data / "good.parquet")
    damage_a_data_page(src, data / "damaged.parquet", row_group=1)
    args = ["--input", str(data), "--tokenizer", str(BERT), "--unit-bytes", str(256 * 1024)]
    code, err = _run(capsys, *args, "--output", str(tmp_path / "o1"))
    assert code == 1, err
    assert re.search(
        r"damaged.parquet: expected readable parquet rows 1000-2000, found damaged", err
    )
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "o1" / "manifest.json").exists()

    code, err = _run(capsys, *args, "--output", str(tmp_path / "o2"), "--on-bad-file", "skip")
    assert code == 0, err
    manifest = load_manifest(str(tmp_path / "o2"))
    (skipped,) = manifest.skipped_files
    assert skipped.path.endswith("damaged.parquet") and "rows 1000-2000" in skipped.reason
    train = manifest.splits["train"]
    # The good file and the damaged file's three other row groups: 4 + 3 units of 1,000 rows.
    read = train.ledger.num_documents + manifest.splits["validation"].ledger.num_documents
    assert read == 3830 + 3830 - 1000 and train.num_blocks > 0


def test_every_run_flag_has_help_with_its_default() -> None:
    import argparse

    parser = cli.build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    run = sub.choices["run"]
    flags = [a for a in run._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= 19, "every RunConfig field and every execution flag"
    text = run.format_help()
    for action in flags:
        assert action.help, f"{action.option_strings[0]} has no help text"
        if not action.required:
            assert "default" in action.help, f"{action.option_strings[0]} names no default"
    for shown in ("(default: text)", "(default: 128)", "(default: 33554432)", "(default: 1)"):
        assert shown in " ".join(text.split())
