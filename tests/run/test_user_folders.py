"""The user's own files and folders (issue 9): a run removes only what a run wrote, reads each
real file once, names every file it will not read, and refuses an output that holds an input."""

from __future__ import annotations

from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.commands.verification import verify_output
from pipeline.errors import DataError, UsageError
from pipeline.format.manifest import load_manifest
from pipeline.run.runner import LocalExecutor, RunResult, run_pipeline
from tests.conftest import BERT, DICTWIKI, make_config

_ROWS = pq.read_table(DICTWIKI / "train-00000-of-00004.parquet").slice(0, 300)


def write_docs(path: Path, start: int = 0, stop: int = 300) -> Path:
    """A parquet file of dictwiki articles start..stop (distinct ids, real text)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(_ROWS.slice(start, stop - start), path)
    return path


def run(inputs: Path | str, out: Path, **kw: object) -> RunResult:
    overwrite = bool(kw.pop("overwrite", False))
    kw.setdefault("block_size", 32)
    config = make_config(inputs, BERT, out, **kw)
    return run_pipeline(config, LocalExecutor(), overwrite=overwrite, progress_stream=None)


def documents(result: RunResult) -> int:
    splits = result.manifest["splits"].values()
    assert all(s["num_blocks"] > 0 for s in splits), "the run saw real work"
    return sum(s["ledger"]["num_documents"] for s in splits)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes, but the run's (empty) lock file."""
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in folder.rglob("*")
        if p.is_file() and p.name != ".lock"
    }


# §1: --overwrite deletes only what a run of this pipeline wrote


def test_an_output_holding_the_input_is_refused_before_any_work(tmp_path: Path) -> None:
    """The Hugging Face layout: --input data/train --output data (the input's parent)."""
    data = tmp_path / "data"
    write_docs(data / "train" / "part-0.parquet")
    write_docs(data / "validation" / "part-0.parquet", 0, 50)
    before = snapshot(data)
    for out in (data, tmp_path, data / "train"):
        for overwrite in (False, True):
            with pytest.raises(UsageError, match=r"--output .*: expected a folder (that holds no "
                               r"input|outside the input folder)"):  # fmt: skip
                run(data / "train", out, overwrite=overwrite)
    assert snapshot(data) == before


def test_an_output_holding_an_input_through_a_symlink_is_refused(tmp_path: Path) -> None:
    write_docs(tmp_path / "data" / "train" / "a.parquet")
    (tmp_path / "link").symlink_to(tmp_path / "data")
    with pytest.raises(UsageError, match=r"found the input .*a.parquet inside it"):
        run(tmp_path / "link" / "train" / "a.parquet", tmp_path / "data", overwrite=True)


def test_a_project_folder_is_refused_with_its_files_named_and_kept(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    proj = tmp_path / "proj"
    (proj / "train").mkdir(parents=True)
    (proj / "train" / "train.py").write_text("print('my code')\n")
    (proj / "notes.md").write_text("notes\n")
    before = snapshot(proj)
    for overwrite in (False, True):
        with pytest.raises(UsageError, match=r"found files that no run of it wrote \(notes.md, "
                           r"train/train.py\); they are never removed"):  # fmt: skip
            run(tmp_path / "in", proj, overwrite=overwrite)
    assert snapshot(proj) == before


def test_overwrite_replaces_an_earlier_run_and_keeps_foreign_files(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    run(tmp_path / "in", out)
    mine = {
        out / "train" / "train.py": "code\n",
        out / "train" / "shard-1.arrow": "not a shard of the pipeline's naming\n",
        out / "validation" / "notes.txt": "notes\n",
        out / "README.md": "my dataset\n",
    }
    for path, text in mine.items():
        path.write_text(text)
    with pytest.raises(UsageError, match=r"found another run there \(block_size: 32 there"):
        run(tmp_path / "in", out, block_size=16)
    result = run(tmp_path / "in", out, block_size=16, overwrite=True)
    assert documents(result) == 300
    assert all(path.read_text() == text for path, text in mine.items())
    assert load_manifest(str(out))["config"]["block_size"] == 16


def test_a_killed_runs_temporary_files_are_removed_by_the_rerun(tmp_path: Path) -> None:
    """kill -9 between a shard's temporary write and its rename leaves `.NAME.tmp-PID`."""
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    run(tmp_path / "in", out)
    (out / "manifest.json").unlink()
    leftovers = [out / "train" / ".shard-00000.arrow.tmp-4242", out / ".manifest.json.tmp-77"]
    for path in leftovers:
        path.write_bytes(b"half a shard")
    foreign = out / "train" / ".my-notes.tmp-1"  # not the temporary of a run file: kept
    foreign.write_text("x")
    assert documents(run(tmp_path / "in", out)) == 300
    assert not any(p.exists() for p in leftovers) and foreign.exists()
    foreign.unlink()
    assert verify_output(str(out)) == []


@pytest.mark.parametrize("damage", [b"", b'{"digest": "ab', b"null", b"[]", b"{}"])
def test_a_damaged_run_json_is_recovered_by_overwrite(tmp_path: Path, damage: bytes) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    run(tmp_path / "in", out)
    (out / "run.json").write_bytes(damage)
    with pytest.raises(UsageError, match=r"found an earlier run whose run.json is missing or "
                       r"damaged; pass --overwrite"):  # fmt: skip
        run(tmp_path / "in", out)
    assert documents(run(tmp_path / "in", out, overwrite=True)) == 300
    assert verify_output(str(out)) == []


@pytest.mark.parametrize("damage", [b"", b'{"format_', b"null", b"[]"])
def test_a_damaged_manifest_is_rewritten_by_the_rerun(tmp_path: Path, damage: bytes) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    run(tmp_path / "in", out)
    (out / "manifest.json").write_bytes(damage)
    with pytest.raises(DataError, match=r"manifest.json: expected"):
        load_manifest(str(out))
    assert documents(run(tmp_path / "in", out)) == 300
    assert verify_output(str(out)) == []


def test_output_naming_a_file_says_so(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    (tmp_path / "out").write_text("a file\n")
    with pytest.raises(UsageError, match=r"--output .*out: expected a folder, found a file"):
        run(tmp_path / "in", tmp_path / "out", overwrite=True)
    assert (tmp_path / "out").read_text() == "a file\n"
