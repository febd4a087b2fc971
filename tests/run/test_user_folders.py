"""The user's own files and folders (issue 9): a run removes only what a run wrote, reads each
real file once, names every file it will not read, and refuses an output that holds an input."""

from __future__ import annotations

import dataclasses
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.commands.verification import verify_output
from pipeline.errors import DataError, UsageError
from pipeline.format.manifest import load_manifest
from pipeline.run.runner import LocalExecutor, RunResult, run_pipeline
from tests.conftest import BERT, DICTWIKI, REPO, make_config

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
    splits = result.manifest.to_dict()["splits"].values()
    assert all(s["num_blocks"] > 0 for s in splits), "the run saw real work"
    return sum(s["ledger"]["num_documents"] for s in splits)


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file's bytes (a refused run leaves not even its lock file)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


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
    assert load_manifest(str(out)).block_size == 16


def _killed_while_writing(path: Path) -> Path:
    """A process killed (SIGKILL) inside storage.write_bytes_atomic, before its rename: the
    temporary file it leaves, under the name storage really uses."""
    script = (
        "import os, signal, sys\n"
        "from pipeline.format import storage\n"
        "os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)\n"
        "storage.write_bytes_atomic(sys.argv[1], b'half a shard')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", script, str(path)], env=env, timeout=120)
    assert done.returncode == -signal.SIGKILL
    (left,) = [p for p in path.parent.iterdir() if p.name.startswith(f".{path.name}.tmp-")]
    return left


def test_a_killed_runs_temporary_files_are_removed_by_the_rerun(tmp_path: Path) -> None:
    """kill -9 between a shard's temporary write and its rename leaves `.NAME.tmp-PID`."""
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    run(tmp_path / "in", out)
    (out / "manifest.json").unlink()
    leftovers = [
        _killed_while_writing(out / "train" / "shard-00000.arrow"),
        _killed_while_writing(out / "manifest.json"),
    ]
    assert not (out / "manifest.json").exists()
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
    with pytest.raises(UsageError, match=r"found an earlier run whose run.json is "
                       r"damaged; pass --overwrite"):  # fmt: skip
        run(tmp_path / "in", out)
    assert documents(run(tmp_path / "in", out, overwrite=True)) == 300
    assert verify_output(str(out)) == []


@pytest.mark.parametrize(
    "files",
    [
        {"tokenizer.json": "{}", "config.json": "{}"},  # a Hugging Face model folder
        {"manifest.json": '{"name": "my web app"}'},
        {"tokenizer.json": "{}"},
        {"run.json": "{}", "notes.md": "mine"},
    ],
)
def test_files_with_a_runs_names_in_a_users_folder_are_the_users(
    tmp_path: Path, files: dict[str, str]
) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    folder = tmp_path / "mine"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    for overwrite in (False, True):
        with pytest.raises(UsageError, match=r"found files that no run of it wrote"):
            run(tmp_path / "in", folder, overwrite=overwrite)
    assert snapshot(folder) == {name: text.encode() for name, text in files.items()}


def test_a_damaged_run_json_beside_a_kept_training_run_is_recovered(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    run(tmp_path / "in", out)
    kept = out / "run" / "model" / "tokenizer.json"
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    (out / "run.json").write_bytes(b"")
    assert documents(run(tmp_path / "in", out, overwrite=True)) == 300
    assert kept.read_text() == "{}"


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


# §2: a path means the file or folder it names


def test_a_path_that_exists_is_taken_literally(tmp_path: Path) -> None:
    write_docs(tmp_path / "corpus[1]" / "a.parquet", 0, 300)
    write_docs(tmp_path / "corpus1" / "a.parquet", 0, 10)  # what the glob `corpus[1]` matches
    write_docs(tmp_path / "wiki [en]" / "a.parquet", 0, 120)
    assert documents(run(tmp_path / "corpus[1]", tmp_path / "out1")) == 300
    assert documents(run(tmp_path / "wiki [en]", tmp_path / "out2")) == 120


def test_only_a_missing_path_is_a_glob_and_found_nothing_says_so(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a-1.parquet", 0, 100)
    write_docs(tmp_path / "in" / "a-2.parquet", 100, 150)
    assert documents(run(str(tmp_path / "in" / "a-*.parquet"), tmp_path / "out")) == 150
    with pytest.raises(UsageError, match=r"b-\*.parquet: expected .* found nothing there "
                       r"\(tried as a glob too: no match\)"):  # fmt: skip
        run(str(tmp_path / "in" / "b-*.parquet"), tmp_path / "out2")


# §3: each real file once, nothing dropped silently


def test_links_are_read_once_and_loops_survived(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_docs(data / "a.parquet", 0, 200)
    (data / "b.parquet").symlink_to(data / "a.parquet")
    (data / "sub").mkdir()
    (data / "sub" / "loop").symlink_to(data)  # data/sub/loop/sub/loop/... forever
    write_docs(tmp_path / "elsewhere" / "c.parquet", 200, 300)
    (data / "c").symlink_to(tmp_path / "elsewhere")
    result = run(data, tmp_path / "out")
    assert documents(result) == 300
    assert sorted(Path(i["path"]).name for i in result.manifest.to_dict()["inputs"]) == [
        "a.parquet", "c.parquet",
    ]  # fmt: skip


def test_a_link_to_an_ancestor_is_not_followed_and_is_named(tmp_path: Path) -> None:
    """`data/loop/up -> ../..` would read the whole parent tree (here a 100-document file beside
    `data`); a hard link is read once; an unreadable subfolder is named, not skipped silently."""
    from pipeline.ingest.sources import list_inputs

    data = tmp_path / "data"
    write_docs(data / "a.parquet", 0, 200)
    write_docs(tmp_path / "beside" / "b.parquet", 200, 300)
    (data / "loop").mkdir()
    (data / "loop" / "up").symlink_to("../..")
    (data / "loop" / "self").symlink_to("..")  # a loop within the input: its files are read
    os.link(data / "a.parquet", data / "loop" / "hard.parquet")
    listing = list_inputs((str(data),))
    assert listing.files == [str(data / "a.parquet")]
    assert listing.not_read == [
        {"path": str(data / "loop" / "up"), "reason": "a link to an ancestor folder"}
    ]
    with pytest.raises(DataError, match=r"loop/up: a link to an ancestor folder\); point"):
        run(data, tmp_path / "out")
    result = run(data, tmp_path / "out", on_bad_file="skip")
    assert documents(result) == 200
    assert [s.reason for s in result.manifest.skipped_files] == ["a link to an ancestor folder"]


def test_an_unreadable_subfolder_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from pipeline.ingest.sources import list_inputs

    write_docs(tmp_path / "data" / "a.parquet")
    write_docs(tmp_path / "data" / "locked" / "b.parquet")
    real_scandir = os.scandir

    def scandir(path: str) -> object:  # root may read any folder: deny one as chmod 000 would
        if str(path).endswith("locked"):
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    listing = list_inputs((str(tmp_path / "data"),))
    assert listing.files == [str(tmp_path / "data" / "a.parquet")]
    assert listing.not_read == [
        {
            "path": str(tmp_path / "data" / "locked"),
            "reason": "a folder that cannot be read (Permission denied)",
        }
    ]


@pytest.mark.parametrize("damage", ["truncate", "edit", "remove"])
def test_a_damaged_or_edited_tokenizer_json_is_rewritten_by_a_rerun(
    tmp_path: Path, damage: str
) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    first = run(tmp_path / "in", out)
    tok = out / "tokenizer.json"
    original = tok.read_bytes()
    if damage == "truncate":
        tok.write_bytes(original[:100])
    elif damage == "edit":
        tok.write_bytes(original.replace(b"[MASK]", b"[MOSK]"))
    else:
        tok.unlink()
    assert verify_output(str(out)) != [], "the damage is seen"
    again = run(tmp_path / "in", out)
    assert again.num_units_run == 0 and documents(again) == documents(first) == 300
    assert tok.read_bytes() == original
    assert verify_output(str(out)) == []


@pytest.mark.parametrize("text", ["null", "[]", '{"unit": [], "ledger": null}'])
def test_a_null_or_list_sidecar_is_redone_by_a_rerun(tmp_path: Path, text: str) -> None:
    write_docs(tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    first = run(tmp_path / "in", out)
    for overwrite in (False, True):
        (out / "train" / "shard-00000.json").write_text(text)
        again = run(tmp_path / "in", out, overwrite=overwrite)
        assert again.num_units_run == 1 and again.manifest == first.manifest
        assert documents(again) == 300 and verify_output(str(out)) == []


def test_a_hugging_face_hub_cache_is_read_through_its_links(tmp_path: Path) -> None:
    """`snapshots/rev1/data/train-00000-of-00001.parquet -> ../../../blobs/9f8e7d6c5b4a`: the
    blob's name has no suffix; the file is known by its link's name, in messages and manifest."""
    repo = tmp_path / "hub" / "datasets--wiki"
    write_docs(repo / "blobs" / "9f8e7d6c5b4a", 0, 300)
    data = repo / "snapshots" / "rev1" / "data"
    data.mkdir(parents=True)
    (data / "train-00000-of-00001.parquet").symlink_to("../../../blobs/9f8e7d6c5b4a")
    name = str(data / "train-00000-of-00001.parquet")
    for given in (repo / "snapshots" / "rev1", data / "train-00000-of-00001.parquet"):
        result = run(given, tmp_path / f"out-{given.name}")
        assert documents(result) == 300
        assert [i["path"] for i in result.manifest.to_dict()["inputs"]] == [name]
    with pytest.raises(UsageError, match=r"found the input .*train-00000-of-00001.parquet inside"):
        run(data, repo / "blobs", overwrite=True)  # the blob lies in the output


def test_a_file_named_twice_is_read_once(tmp_path: Path) -> None:
    write_docs(tmp_path / "data" / "a.parquet", 0, 300)
    (tmp_path / "alias").symlink_to(tmp_path / "data")
    inputs = (tmp_path / "data", tmp_path / "data" / "a.parquet", tmp_path / "alias" / "a.parquet")
    config = make_config(tmp_path, BERT, tmp_path / "out", block_size=32)
    config = dataclasses.replace(config, inputs=tuple(map(str, inputs)))
    result = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert documents(result) == 300 and len(result.manifest.to_dict()["inputs"]) == 1


def test_a_spark_output_folder_reads_what_pyarrow_dataset_reads(tmp_path: Path) -> None:
    import pyarrow.dataset as ds

    data = tmp_path / "spark"
    write_docs(data / "part-00000-x.snappy.parquet", 0, 150)
    write_docs(data / "part-00001-x.snappy.parquet", 150, 300)
    write_docs(data / "_temporary" / "0" / "_temporary" / "attempt_1" / "part-00000.parquet")
    write_docs(data / ".hive-staging_hive_2024" / "-ext-10000" / "part-0.parquet")
    write_docs(data / ".part-00000-x.snappy.parquet", 0, 150)
    (data / "_SUCCESS").write_bytes(b"")
    (data / ".part-00000-x.snappy.parquet.crc").write_bytes(b"crc")
    assert ds.dataset(data).count_rows() == 300
    assert documents(run(data, tmp_path / "out")) == 300


def test_every_file_that_will_not_be_read_is_named_before_any_work(tmp_path: Path) -> None:
    import gzip
    import json

    data = tmp_path / "data"
    write_docs(data / "a.parquet", 0, 100)
    write_docs(data / "b.PARQUET", 100, 200)
    lines = "".join(json.dumps({"id": f"j{i}", "text": f"Line {i} of the dump."}) + "\n"
                    for i in range(50))  # fmt: skip
    (data / "c.jsonl.gz").write_bytes(gzip.compress(lines.encode()))
    (data / "e.json.gz").write_bytes(gzip.compress(lines.replace('"j', '"k').encode()))
    (data / "d.csv").write_text("id,text\n1,hello\n")
    (data / "gone.parquet").symlink_to(data / "nowhere.parquet")
    out = tmp_path / "out"
    unread = r"found 2 that will not be read \(.*d.csv: not a data file .*gone.parquet: a sym"
    with pytest.raises(DataError, match=unread + r"bolic link to nothing\); point --input"):
        run(data, out)
    assert not out.exists() or not any(out.iterdir())
    result = run(data, out, on_bad_file="skip")
    assert documents(result) == 300
    skipped = {Path(s.path).name: s.reason for s in result.manifest.skipped_files}
    assert skipped == {
        "d.csv": "not a data file (.parquet, .jsonl, .jsonl.zst, .jsonl.gz, .json.gz)",
        "gone.parquet": "a symbolic link to nothing",
    }


# §4: input columns and rows as users' writers produce them


@pytest.mark.parametrize(
    "text_type",
    [pa.string(), pa.large_string(), pa.string_view(), pa.dictionary(pa.int32(), pa.string())],
)
def test_text_columns_of_every_string_type_give_the_same_shards(
    tmp_path: Path, text_type: pa.DataType
) -> None:
    rows = _ROWS.slice(0, 200)
    text = rows.column("text").cast(pa.string())
    typed = rows.set_column(rows.schema.get_field_index("text"), "text", text.cast(text_type))
    (tmp_path / "in").mkdir()
    pq.write_table(typed, tmp_path / "in" / "a.parquet")
    assert pq.read_schema(tmp_path / "in" / "a.parquet").field("text").type == text_type
    result = run(tmp_path / "in", tmp_path / "out")
    assert documents(result) == 200
    (tmp_path / "plain").mkdir()
    pq.write_table(rows, tmp_path / "plain" / "a.parquet")
    plain = run(tmp_path / "plain", tmp_path / "out-plain")
    for split in ("train", "validation"):
        got = [s["sha256"] for s in result.manifest.to_dict()["splits"][split]["shards"]]
        assert got == [s["sha256"] for s in plain.manifest.to_dict()["splits"][split]["shards"]]


def test_a_zero_row_file_is_counted_and_left_out(tmp_path: Path) -> None:
    write_docs(tmp_path / "in" / "a.parquet", 0, 100)
    empty = pa.table({"id": pa.array([], pa.null()), "text": pa.array([], pa.null())})
    pq.write_table(empty, tmp_path / "in" / "b.parquet")  # what pandas writes for an empty frame
    result = run(tmp_path / "in", tmp_path / "out")
    assert documents(result) == 100
    assert result.manifest.to_dict()["skipped_files"] == [
        {"path": str(tmp_path / "in" / "b.parquet"), "reason": f"{tmp_path}/in/b.parquet: 0 rows "
         "(counted and left out)"}
    ]  # fmt: skip


def test_a_text_column_that_is_not_text_names_the_types_read(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    pq.write_table(pa.table({"id": ["1"], "text": [3]}), tmp_path / "in" / "a.parquet")
    kinds = r"\(string, large_string, string_view or dictionary of strings\)"
    with pytest.raises(DataError, match=r"expected column 'text' to hold text " + kinds):
        run(tmp_path / "in", tmp_path / "out")


@pytest.mark.parametrize("id_column", ["text", "title", "url", "n", "f", "tags", "when"])
def test_any_column_can_be_the_id(tmp_path: Path, id_column: str) -> None:
    import datetime

    rows = _ROWS.slice(0, 200)
    n = len(rows)
    rows = rows.append_column("n", pa.array(range(n), pa.int16()))
    rows = rows.append_column("f", pa.array([i / 7 for i in range(n)], pa.float64()))
    rows = rows.append_column("tags", pa.array([[f"t{i}", "x"] for i in range(n)]))
    start = datetime.datetime(2022, 3, 1)
    rows = rows.append_column(
        "when", pa.array([start + datetime.timedelta(hours=i) for i in range(n)])
    )
    (tmp_path / "in").mkdir()
    pq.write_table(rows, tmp_path / "in" / "a.parquet")
    result = run(tmp_path / "in", tmp_path / "out", id_column=id_column, validation_fraction=0.2)
    assert documents(result) == 200
    assert result.manifest.to_dict()["splits"]["validation"]["ledger"]["num_documents"] > 10


# §8: many small files cost what their bytes cost


def _small_files(folder: Path, count: int, rows_each: int) -> None:
    for k in range(count):
        write_docs(folder / f"part-{k:05d}.parquet", k * rows_each, (k + 1) * rows_each)


def test_small_files_share_units_and_give_the_bytes_of_one_file(tmp_path: Path) -> None:
    _small_files(tmp_path / "many", 100, 3)
    write_docs(tmp_path / "one" / "all.parquet", 0, 300)
    many = run(tmp_path / "many", tmp_path / "out-many", unit_bytes=1 << 30)
    one = run(tmp_path / "one", tmp_path / "out-one", unit_bytes=1 << 30)
    assert many.num_units == one.num_units == 1 and documents(many) == 300
    for split in ("train", "validation"):
        shards = [[s.sha256 for s in r.manifest.splits[split].shards] for r in (many, one)]
        assert shards[0] == shards[1], "the same rows in 100 files or in one: the same shards"
    assert len(list((tmp_path / "out-many").rglob("*"))) == len(
        list((tmp_path / "out-one").rglob("*"))
    )
    import json

    import jsonschema

    schema = json.loads((REPO / "schemas" / "sidecar.schema.json").read_text())
    car = json.loads((tmp_path / "out-many" / "train" / "shard-00000.json").read_text())
    jsonschema.Draft202012Validator(schema).validate(car)
    assert len(car["unit"]["more"]) == 99 and car["unit"]["path"].endswith("part-00000.parquet")


def test_small_files_are_planned_up_to_unit_bytes_and_resume(tmp_path: Path) -> None:
    from pipeline.ingest.sources import describe_input, list_inputs
    from pipeline.ingest.units import plan_units

    _small_files(tmp_path / "many", 60, 5)
    described = [
        describe_input(p, "text", "id") for p in list_inputs((str(tmp_path / "many"),)).files
    ]
    sizes = [sum(f.row_group_text_bytes) for f in described]
    unit_bytes = sum(sizes) // 4
    units = plan_units(described, unit_bytes)
    assert 4 <= len(units) <= 5
    assert [p.path for u in units for p in u.parts] == [f.path for f in described]
    assert all(u.text_bytes >= unit_bytes for u in units[:-1])
    out = tmp_path / "out"
    first = run(tmp_path / "many", out, unit_bytes=unit_bytes)
    assert first.num_units == len(units) and documents(first) == 300
    (out / "train" / "shard-00002.arrow").unlink()
    again = run(tmp_path / "many", out, unit_bytes=unit_bytes)
    assert again.num_units_run == 1 and again.manifest == first.manifest


def test_a_damaged_file_among_small_files_names_itself(tmp_path: Path) -> None:
    from tests.conftest import damage_a_data_page

    _small_files(tmp_path / "many", 20, 10)
    big = tmp_path / "big.parquet"
    pq.write_table(_ROWS.slice(70, 20), big, row_group_size=10)
    damage_a_data_page(big, tmp_path / "many" / "part-00007.parquet", row_group=1)
    unit_bytes = sum(p.stat().st_size for p in (tmp_path / "many").iterdir()) // 4
    with pytest.raises(DataError, match=r"part-00007.parquet: expected readable parquet rows "
                       r"0-20, found damaged data"):  # fmt: skip
        run(tmp_path / "many", tmp_path / "out", unit_bytes=unit_bytes)
    result = run(tmp_path / "many", tmp_path / "out2", unit_bytes=unit_bytes, on_bad_file="skip")
    (skipped,) = result.manifest.to_dict()["skipped_files"]  # only the damaged file
    assert Path(skipped["path"]).name == "part-00007.parquet"
    assert "part-00007.parquet: expected readable parquet" in skipped["reason"]
    assert documents(result) == 19 * 10  # every good file of its unit was read


@pytest.mark.parametrize("unit_bytes", [None, 30_000])
def test_a_damaged_file_leaves_out_only_itself_from_its_unit(
    tmp_path: Path, unit_bytes: int | None
) -> None:
    """Six 20-row files, the fourth damaged: the other five (100 documents) are the dataset,
    whether all six share one unit or units of a few files, with one worker or two."""
    from pipeline.run.worker_pool import ProcessExecutor
    from tests.conftest import damage_a_data_page

    many = tmp_path / "many"
    many.mkdir()
    for k in range(6):
        pq.write_table(_ROWS.slice(20 * k, 20), many / f"f{k}.parquet", row_group_size=10)
    damage_a_data_page(many / "f3.parquet", many / "f3.parquet", row_group=1)
    kw: dict[str, object] = {"on_bad_file": "skip"}
    if unit_bytes:
        kw["unit_bytes"] = unit_bytes
    result = run(many, tmp_path / "out", **kw)
    assert unit_bytes is None or result.num_units > 1, "units of several files, not one"
    skipped = result.manifest.to_dict()["skipped_files"]
    assert [Path(s["path"]).name for s in skipped] == ["f3.parquet"]
    assert re.match(r".*f3\.parquet: expected readable parquet rows 0-20, found damaged data",
                    skipped[0]["reason"])  # fmt: skip
    assert documents(result) == 100
    config = make_config(many, BERT, tmp_path / "out2", block_size=32, **kw)
    pooled = run_pipeline(config, ProcessExecutor(workers=2, threads_per_worker=1),
                          progress_stream=None)  # fmt: skip
    assert pooled.manifest == result.manifest
    assert verify_output(str(tmp_path / "out")) == []


def test_an_object_store_prefix_follows_the_same_rules(tmp_path: Path, s3_bucket: str) -> None:
    from pipeline.ingest.sources import list_inputs
    from tests.conftest import upload_folder

    spark = tmp_path / "spark"
    write_docs(spark / "part-0.parquet", 0, 100)
    write_docs(spark / "_temporary" / "0" / "part-0.parquet", 0, 100)
    write_docs(spark / ".hive-staging_1" / "part-0.parquet", 0, 100)
    (spark / "_SUCCESS").write_bytes(b"")
    (spark / "notes.csv").write_text("a,b\n")
    upload_folder(spark, f"s3://{s3_bucket}/spark")
    listing = list_inputs((f"s3://{s3_bucket}/spark",))
    assert listing.files == [f"s3://{s3_bucket}/spark/part-0.parquet"]
    assert [e["path"] for e in listing.not_read] == [f"s3://{s3_bucket}/spark/notes.csv"]
