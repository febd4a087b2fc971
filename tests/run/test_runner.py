"""The runner end to end on real data (local executor): ledger, resume, refusal, failures."""

from __future__ import annotations

import errno
import hashlib
import shutil
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.errors import DataError, UsageError
from pipeline.format import storage
from pipeline.format.manifest import load_manifest
from pipeline.format.shards import ShardReader
from pipeline.run.output_folder import exclusive
from pipeline.run.runner import LocalExecutor, run_pipeline
from pipeline.run.worker_pool import ProcessExecutor
from tests.conftest import BERT, DICTWIKI, UNIGRAM, make_config


def _digest_tree(out: Path) -> dict[str, str]:
    """sha256 of every file but the timings (the only file allowed to differ between runs)."""
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.name != "timings.json"
    }


@pytest.fixture(scope="module")
def unigram_reference(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """All of dictwiki (9 units) in this process: what every executor must write byte for byte."""
    out = tmp_path_factory.mktemp("unigram-reference") / "out"
    run_pipeline(make_config(DICTWIKI, UNIGRAM, out), LocalExecutor(), progress_stream=None)
    return out


@pytest.mark.parametrize("workers", [1, 2], ids=["1-process", "2-processes"])
def test_worker_processes_write_the_same_bytes_as_one_process(
    tmp_path: Path, unigram_reference: Path, workers: int
) -> None:
    out = tmp_path / "out"
    result = run_pipeline(
        make_config(DICTWIKI, UNIGRAM, out), ProcessExecutor(workers=workers), progress_stream=None
    )
    assert result.num_units_run == result.num_units == 9
    assert result.manifest.splits["train"].num_blocks > 9_000
    assert result.num_tokens > 1_000_000
    assert _digest_tree(out) == _digest_tree(unigram_reference)


def test_real_run_balances_and_splits_by_document(bert_output: Path) -> None:
    manifest = load_manifest(str(bert_output))
    train, val = manifest.splits["train"], manifest.splits["validation"]
    for split in (train, val):
        ledger = split.ledger
        assert ledger.problems() == []
        assert split.num_blocks > 0 and split.num_tokens == split.num_blocks * 128
        assert ledger.num_dropped_tokens < 126
        assert ledger.num_carried_in == ledger.num_carried_out > 0
    docs = train.ledger.num_documents + val.ledger.num_documents
    assert docs == 15_320 == sum(i.num_rows for i in manifest.inputs)
    assert 0.04 < val.ledger.num_documents / docs < 0.06
    assert manifest.num_units == len(train.shards) - 1  # + the stitched tail shard
    # uint16 ids, zstd 3: measured 1.39 bytes/token on dictwiki (ids alone 1.35 in batches of
    # 2,048 blocks; its short technical articles compress worse than Wikipedia prose).
    assert train.num_bytes / train.num_tokens < 1.45


def test_rerun_resumes_and_redoes_only_damaged_units(
    tmp_path: Path, dictwiki_one_file: Path
) -> None:
    out = tmp_path / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=256 * 1024)
    first = run_pipeline(config, LocalExecutor(), progress_stream=None)
    before = _digest_tree(out)
    assert first.num_units_run == first.num_units >= 4

    again = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert again.num_units_run == 0 and _digest_tree(out) == before

    (out / "train" / "shard-00001.arrow").unlink()
    shard = out / "validation" / "shard-00002.arrow"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    (out / "manifest.json").unlink()
    third = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert third.num_units_run == 2
    assert _digest_tree(out) == before


def test_different_run_is_refused_then_overwritten(tmp_path: Path, dictwiki_one_file: Path) -> None:
    out = tmp_path / "out"
    run_pipeline(
        make_config(dictwiki_one_file, BERT, out, unit_bytes=1 << 30),
        LocalExecutor(),
        progress_stream=None,
    )
    other = make_config(dictwiki_one_file, BERT, out, unit_bytes=1 << 30, block_size=64)
    with pytest.raises(
        UsageError, match=r"found another run there \(block_size: 128 there, 64 now\)"
    ):
        run_pipeline(other, LocalExecutor(), progress_stream=None)
    other_tok = make_config(dictwiki_one_file, UNIGRAM, out, unit_bytes=1 << 30)
    with pytest.raises(UsageError, match=r"tokenizer: a different tokenizer.json"):
        run_pipeline(other_tok, LocalExecutor(), progress_stream=None)
    result = run_pipeline(other, LocalExecutor(), overwrite=True, progress_stream=None)
    assert result.manifest.block_size == 64
    assert result.manifest.splits["train"].num_blocks > 0


def test_output_inside_input_is_refused(tmp_path: Path, dictwiki_one_file: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dictwiki_one_file, data)
    with pytest.raises(UsageError, match=r"expected a folder outside the input folder"):
        run_pipeline(make_config(data, BERT, data / "out"), LocalExecutor(), progress_stream=None)


def test_failed_write_leaves_no_manifest_and_no_partial_shard(
    tmp_path: Path, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    calls = {"n": 0}
    real_fsync = storage.os.fsync

    def fsync_filling_the_disk(fd: int) -> None:
        calls["n"] += 1
        if calls["n"] == 13:  # unit 0 done (run, tokenizer, 2 shards, 2 sidecars: 12 fsyncs)
            raise OSError(errno.ENOSPC, "No space left on device")
        real_fsync(fd)

    monkeypatch.setattr(storage.os, "fsync", fsync_filling_the_disk)
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=256 * 1024)
    with pytest.raises(OSError, match="No space left on device"):
        run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert not (out / "manifest.json").exists()
    assert not list(out.rglob(".*tmp*")), "temporary files are removed"
    for shard in out.rglob("shard-*.arrow"):
        assert ShardReader(str(shard)).read_all().num_blocks > 0  # published shards are whole
    monkeypatch.undo()
    result = run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert 0 < result.num_units_run < result.num_units, "the rerun resumed"


def test_odd_rows_are_skipped_and_counted(tmp_path: Path) -> None:
    texts = ["A real article about Lisp.", None, "", "   \n ", "Another one.", "x" * 50]
    table = pa.table(
        {"id": [str(i) for i in range(6)], "url": ["u"] * 6, "title": ["t"] * 6, "text": texts}
    )
    (tmp_path / "in").mkdir()
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    out = tmp_path / "out"
    result = run_pipeline(
        make_config(tmp_path / "in", BERT, out, validation_fraction=0.0, block_size=8),
        LocalExecutor(),
        progress_stream=None,
    )
    ledger = result.manifest.splits["train"].ledger
    assert ledger.skipped == {"null_text": 1, "empty_text": 2, "invalid_utf8": 0}
    assert ledger.num_documents == 6 and ledger.num_documents_packed == 3
    assert ledger.problems() == []
    assert result.manifest.splits["train"].num_blocks > 0


def test_bad_file_is_skipped_and_listed_when_asked(tmp_path: Path, dictwiki_one_file: Path) -> None:
    data = tmp_path / "data"
    shutil.copytree(dictwiki_one_file, data)
    (data / "broken.parquet").write_bytes(b"PAR1 truncated")
    with pytest.raises(DataError, match=r"broken.parquet: expected a parquet file"):
        run_pipeline(
            make_config(data, BERT, tmp_path / "o1"), LocalExecutor(), progress_stream=None
        )
    result = run_pipeline(
        make_config(data, BERT, tmp_path / "o2", on_bad_file="skip"),
        LocalExecutor(),
        progress_stream=None,
    )
    (skipped,) = result.manifest.skipped_files
    assert skipped.path.endswith("broken.parquet") and "footer" in skipped.reason
    assert result.manifest.splits["train"].num_blocks > 0


@pytest.mark.parametrize(
    ("overrides", "match"),
    [
        ({"block_size": 7}, r"--block-size: expected 8 to 65536, found 7"),
        ({"block_size": 65_537}, r"--block-size: expected 8 to 65536, found 65537"),
        ({"validation_fraction": 1.0}, r"--validation-fraction: expected a number in \[0, 1\)"),
        ({"validation_fraction": -0.1}, r"--validation-fraction: expected a number in \[0, 1\)"),
        ({"packing": "zigzag"}, r"--packing: expected framed or concat"),
    ],
)
def test_config_errors(tmp_path: Path, overrides: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        make_config(tmp_path, BERT, tmp_path / "out", **overrides)


def test_one_huge_article_streams_with_bounded_memory(tmp_path: Path) -> None:
    """A 20 MB article is encoded in 1 M-character pieces. Measured: peak RSS 632 MiB with
    pieces, 2,393 MiB without (one Rust encoding of 5 M tokens with offsets and strings)."""
    import subprocess
    import sys

    words = ("lorem ipsum dolor sit amet consectetur adipiscing elit " * 400_000)[: 20 * 2**20]
    (tmp_path / "in").mkdir()
    pq.write_table(
        pa.table({"id": ["1", "2"], "text": [words, "small"]}), tmp_path / "in" / "big.parquet"
    )
    script = (
        "from pipeline.run.config import RunConfig\n"
        "from pipeline.run.summary import peak_rss_bytes\n"
        "from pipeline.run.runner import LocalExecutor, run_pipeline\n"
        f"c = RunConfig(inputs=({str(tmp_path / 'in')!r},), tokenizer={str(BERT)!r}, "
        f"output={str(tmp_path / 'out')!r}, validation_fraction=0.0)\n"
        "r = run_pipeline(c, LocalExecutor(), progress_stream=None)\n"
        "print(r.manifest.splits['train'].num_blocks, peak_rss_bytes() // 1024)\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    blocks, peak_kib = map(int, out.stdout.split())
    assert blocks > 20_000
    assert peak_kib < 1024 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB for a 20 MB article"


def test_a_second_run_into_the_same_folder_is_refused_while_one_runs(
    tmp_path: Path, dictwiki_one_file: Path
) -> None:
    out = tmp_path / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=1 << 30)
    with exclusive(str(out)), pytest.raises(UsageError, match=r"found one running \(it holds"):
        run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert run_pipeline(config, LocalExecutor(), progress_stream=None).num_units_run == 1


def test_a_new_pipeline_version_does_not_resume_an_old_run(
    tmp_path: Path, dictwiki_one_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "out"
    config = make_config(dictwiki_one_file, BERT, out, unit_bytes=1 << 30)
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    monkeypatch.setattr("pipeline.run.output_folder.__version__", "9.9.9")
    with pytest.raises(UsageError, match=r"pipeline version: '0.1.0' there, '9.9.9' now"):
        run_pipeline(config, LocalExecutor(), progress_stream=None)


def test_overwrite_removes_the_run_and_nothing_else(
    tmp_path: Path, dictwiki_one_file: Path
) -> None:
    out = tmp_path / "out"
    run_pipeline(make_config(dictwiki_one_file, BERT, out, unit_bytes=128 * 1024),
                 LocalExecutor(), progress_stream=None)  # fmt: skip
    kept = out / "run" / "model" / "tokenizer.json"  # e.g. a training run kept beside the data
    kept.parent.mkdir(parents=True)
    kept.write_text("{}")
    fewer_units = make_config(dictwiki_one_file, BERT, out, unit_bytes=1 << 30)
    result = run_pipeline(fewer_units, LocalExecutor(), overwrite=True, progress_stream=None)
    assert kept.read_text() == "{}"
    assert sorted(p.name for p in (out / "train").iterdir()) == [
        "shard-00000.arrow", "shard-00000.json", "shard-00001.arrow", "shard-00001.json",
    ], "no shard of the old run is left behind"  # fmt: skip
    from pipeline.commands.verification import verify_output

    assert verify_output(str(out)) == [] and result.manifest.num_units == 1


def test_a_run_that_packs_nothing_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    table = pa.table({"id": ["1", "2"], "text": pa.array([None, None], pa.string())})
    pq.write_table(table, tmp_path / "in" / "a.parquet")
    with pytest.raises(DataError, match=r"expected texts in column 'text', found none usable in 2"):
        run_pipeline(make_config(tmp_path / "in", BERT, tmp_path / "out"), LocalExecutor(),
                     progress_stream=None)  # fmt: skip
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_jsonl_without_the_text_field_is_refused_before_work(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "a.jsonl").write_text('{"id": 1, "body": "x"}\n')
    with pytest.raises(
        DataError, match=r"a.jsonl: expected a 'text' field .* found \['body', 'id'\]"
    ):
        run_pipeline(make_config(tmp_path / "in", BERT, tmp_path / "out"), LocalExecutor(),
                     progress_stream=None)  # fmt: skip


def test_documents_without_ids_split_the_same_wherever_the_corpus_lies(tmp_path: Path) -> None:
    lines = "".join(f'{{"text": "Article {i} about the Lisp machine."}}\n' for i in range(400))
    manifests = []
    for where in ("here", "elsewhere/deeper"):
        folder = tmp_path / where
        folder.mkdir(parents=True)
        (folder / "corpus.jsonl").write_text(lines)
        result = run_pipeline(
            make_config(folder, BERT, tmp_path / f"out-{where[:4]}", block_size=16),
            LocalExecutor(),
            progress_stream=None,
        )
        manifests.append(result.manifest)
    val = [m.splits["validation"].ledger.num_documents for m in manifests]
    assert val[0] == val[1] > 0
    shards = [[s.sha256 for s in m.splits["validation"].shards] for m in manifests]
    assert shards[0] == shards[1]
