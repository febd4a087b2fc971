"""The CLI on the user's damaged or odd outputs (issue 9 §5, §6, §7): one line, the right exit
code, no traceback; a closed pipe is not an error."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.commands import cli
from tests.conftest import BERT, REPO, dictwiki_slice


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dictwiki_slice(tmp_path_factory.mktemp("small-in"), 0, 300)


def _run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    got = capsys.readouterr()
    return code, got.out, got.err


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def _make_output(capsys: pytest.CaptureFixture[str], small: Path, out: Path, *extra: str) -> None:
    argv = ["run", "--backend", "local", "--quiet", "--input", str(small), "--output", str(out)]
    code, stdout, err = _run(capsys, *argv, "--tokenizer", str(BERT), "--block-size", "32", *extra)
    assert code == 0 and "train" in stdout and " 0 blocks" not in stdout, err


@pytest.mark.parametrize("damage", [b"", b'{"format_version": 1, "spl', b"null", b"[]"])
def test_inspect_verify_and_train_answer_a_damaged_manifest_in_one_line(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str], damage: bytes
) -> None:
    out = tmp_path / "out"
    _make_output(capsys, small, out)
    (out / "manifest.json").write_bytes(damage)
    for argv in (
        ["inspect", str(out)],
        ["train", "--data", str(out), "--model", "tiny-bert", "--output", str(tmp_path / "t")],
    ):
        code, _, err = _run(capsys, *argv)
        line = _one_error_line(err)
        assert code == 1 and "manifest.json: expected" in line, (argv, line)
    code, stdout, err = _run(capsys, "verify", str(out))  # a problem line, then the verdict
    problem, verdict = stdout.strip().splitlines()
    assert code == 1 and err == "" and "manifest.json: expected" in problem
    assert verdict.startswith(f"verify {out}: FAILED, 1 problems")
    _make_output(capsys, small, out)  # the same command rewrites it
    assert _run(capsys, "verify", str(out))[0] == 0


def test_a_train_split_without_a_block_exits_1_and_publishes_nothing(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    argv = ["run", "--backend", "local", "--quiet", "--input", str(small), "--output", str(out)]
    code, _, err = _run(capsys, *argv, "--tokenizer", str(BERT), "--block-size", "65536")
    line = _one_error_line(err)
    why = r"--block-size 65536: expected at least one train block, found none \(the train split"
    assert code == 1 and re.search(why + r" has [\d,]+ tokens in all", line), line
    assert not (out / "manifest.json").exists()


def test_a_tokenizer_without_a_mask_token_is_noted_once(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPT-2-style byte-level BPE: shards are fine, MLM training will need a mask token."""
    from tokenizers import ByteLevelBPETokenizer

    bpe = ByteLevelBPETokenizer()
    texts = pq.read_table(small / "a.parquet").column("text").to_pylist()
    bpe.train_from_iterator(texts, vocab_size=600, special_tokens=["<|endoftext|>"])
    bpe.save(str(tmp_path / "bpe.json"))
    out = tmp_path / "out"
    argv = ["run", "--backend", "local", "--quiet", "--input", str(small), "--output", str(out)]
    code, stdout, err = _run(
        capsys, *argv, "--tokenizer", str(tmp_path / "bpe.json"), "--packing", "concat"
    )
    assert code == 0 and "train" in stdout, err
    notes = [line for line in err.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and "has no mask token" in notes[0] and "will need one" in notes[0]
    code, _, err = _run(capsys, "run", "--backend", "local", "--quiet", "--input", str(small),
                        "--output", str(tmp_path / "out2"), "--tokenizer", str(BERT))  # fmt: skip
    assert code == 0 and "note:" not in err


def test_inspect_checks_the_tokenizer_against_the_manifest(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _make_output(capsys, small, out)
    assert _run(capsys, "inspect", str(out))[0] == 0
    tok = json.loads((out / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    vocab["the"], vocab["of"] = vocab["of"], vocab["the"]  # an edit: same size, other ids
    (out / "tokenizer.json").write_text(json.dumps(tok))
    code, stdout, _ = _run(capsys, "inspect", str(out))
    assert code == 1 and "tokenizer.json: canonical sha256" in stdout
    assert "differs from the manifest's" in stdout


def test_inspect_into_a_closed_pipe_ends_quietly(
    tmp_path: Path, small: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "out"
    _make_output(capsys, small, out)
    shell = f"{sys.executable} -m pipeline.commands.cli inspect {out} --decode 200 | head -n 2"
    done = subprocess.run(
        ["bash", "-o", "pipefail", "-c", shell],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert len(done.stdout.splitlines()) == 2
