"""`pipeline inspect`: figures against the manifest and an independent re-count, histograms,
samples, the per-shard table, failing checks, and the pure histogram/accumulator helpers."""

from __future__ import annotations

import argparse
import itertools
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from tokenizers import Tokenizer

from pipeline.commands import cli
from pipeline.commands.inspection import SplitScan, main, sample_positions, summarize
from pipeline.commands.verification import verify_output
from pipeline.core import histogram
from pipeline.core.packing import Blocks, concat_blocks
from pipeline.errors import DataError, UsageError
from pipeline.format.manifest import Manifest, load_manifest
from pipeline.format.shards import ShardReader
from pipeline.run.runner import LocalExecutor, run_pipeline
from tests.conftest import BERT, make_config


def _args(out: Path, **kw: object) -> argparse.Namespace:
    base = {"output": str(out), "json": False, "decode": 0, "shards": False, "top": 20}
    return argparse.Namespace(**{**base, **kw})


def _manifest(out: Path) -> Manifest:
    return load_manifest(str(out))


def _read_split(out: Path, split: str) -> Blocks:
    """The whole split read the simple way, as an independent reference (test data is small)."""
    parts = [ShardReader(str(out / s.file)).read_all() for s in _manifest(out).splits[split].shards]
    return concat_blocks(parts, parts[0].tokens.shape[1])


def test_text_output_names_the_key_figures(
    bert_output: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_args(bert_output)) == 0
    text = capsys.readouterr().out
    manifest = _manifest(bert_output)
    for split, entry in manifest.splits.items():
        assert entry.num_blocks > 0 and entry.num_tokens > 0
        assert f"{split}: {len(entry.shards)} shards, {entry.num_blocks:,} blocks, " in text
        assert f"{entry.num_tokens:,} tokens" in text
        assert f"on disk {entry.num_bytes:,} bytes" in text
    for phrase in ("bytes/token", "compression", "ledger check: ok", "special tokens", "unknown"):
        assert phrase in text
    assert "tokens between consecutive document starts" in text  # says what the length measures
    assert "blocks by how many documents start in them" in text
    assert re.search(r"\n +64-127 │█+", text), "document-length histogram bars are drawn"
    assert text.rstrip().endswith("checks: ok")


def test_json_figures_equal_the_manifest_and_a_recount(bert_output: Path) -> None:
    summary = summarize(str(bert_output), top=10)
    manifest = _manifest(bert_output)
    assert summary["ok"] and summary["problems"] == []
    for split, entry in manifest.splits.items():
        s = summary["splits"][split]
        assert s["num_blocks"] == entry.num_blocks > 0
        assert s["num_tokens"] == entry.num_tokens > 0
        assert s["num_bytes"] == entry.num_bytes > 0
        assert s["num_documents"] == entry.ledger.num_documents_packed > 0
        assert s["num_doc_starts"] == sum(x.num_doc_starts for x in entry.shards)
        assert s["bytes_per_token"] < 2  # uint16 ids, zstd: below the raw 2 bytes per token
        assert s["compression_ratio"] > 1
        assert s["ledger"]["problems"] == []
        assert sum(b["count"] for b in s["docs_per_block"]["bins"]) == s["num_blocks"]
        assert s["document_length"]["count"] == s["num_doc_starts"] - 1
        assert sum(b["count"] for b in s["document_length"]["bins"]) == s["num_doc_starts"] - 1
        assert s["max_id"] < s["vocab_size"] == manifest.tokenizer.vocab_size
        assert 2 / 128 <= s["special_rate"] < 0.2  # framed: at least [CLS] and [SEP] per block
        assert 0 <= s["unknown_rate"] < 0.01
        assert [row["file"] for row in s["shards"]] == [x.file for x in entry.shards]

    # Re-count the validation split independently: whole arrays, no streaming.
    ref = _read_split(bert_output, "validation")
    v = summary["splits"]["validation"]
    positions = (
        np.repeat(np.arange(ref.num_blocks), np.diff(ref.start_offsets)) * 128 + ref.start_values
    )
    lengths = np.diff(positions)
    assert v["document_length"]["max"] == lengths.max()
    assert v["document_length"]["mean"] == pytest.approx(lengths.mean())
    counts = np.bincount(ref.tokens.ravel())
    top_ids = [row["id"] for row in v["top_tokens"]]
    assert top_ids == sorted(np.flatnonzero(counts), key=lambda i: (-counts[i], i))[:10]
    assert v["top_tokens"][0]["count"] == counts.max()
    train_tokens = [row["token"] for row in summary["splits"]["train"]["top_tokens"]]
    assert {"the", "of", "[SEP]"} <= set(train_tokens)


def test_decode_prints_real_text_from_evenly_spaced_blocks(
    bert_output: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_args(bert_output, decode=2)) == 0
    text = capsys.readouterr().out
    assert "samples: 2 blocks, evenly spaced" in text
    assert (
        len(re.findall(r"\n  train block [\d,]+ \(train/shard-\d{5}\.arrow row [\d,]+\):", text))
        == 2
    )
    summary = summarize(str(bert_output), decode=2)
    tok = Tokenizer.from_file(str(bert_output / "tokenizer.json"))
    total = sum(e.num_blocks for e in _manifest(bert_output).splits.values())
    assert [s["block"] for s in summary["samples"]] == [total // 4, 3 * total // 4]
    for sample in summary["samples"]:
        block = ShardReader(str(bert_output / sample["file"])).read_all().tokens[sample["row"]]
        assert sample["text"] == tok.decode(block.tolist(), skip_special_tokens=False)
        assert sample["text"].startswith("[CLS] ")
        words = re.findall(r"[a-z]{2,}", sample["text"])
        known = [w for w in words if tok.token_to_id(w) is not None]  # whole words in the vocab
        assert len(words) >= 15 and len(known) >= 0.7 * len(words)
        assert {"the", "of", "and", "in", "is", "to"} & set(words)
        assert sample["text"] in text.replace("\n    ", " ")


def test_shards_table_has_one_row_per_shard(
    bert_output: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(_args(bert_output, shards=True)) == 0
    rows = re.findall(
        r"^ +(\w+/shard-\d{5}\.arrow) +([\d,]+) .* (\w+) *$", capsys.readouterr().out, re.M
    )
    manifest = _manifest(bert_output)
    listed = [s for e in manifest.splits.values() for s in e.shards]
    assert [r[0] for r in rows] == [s.file for s in listed]
    assert [int(r[1].replace(",", "")) for r in rows] == [s.num_blocks for s in listed]
    assert {r[2] for r in rows} == {"ok"}


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (
            lambda m: m["splits"]["train"]["ledger"].update(num_dropped_tokens=7),
            "ledger: tokens in",
        ),
        (lambda m: m["splits"]["validation"]["ledger"].update(num_documents=1), "documents read 1"),
        (lambda m: m["splits"]["train"]["shards"][1].update(num_blocks=5), "the manifest says 5"),
        (
            lambda m: m["splits"]["train"].update(num_tokens=128),
            "tokens 128 != ledger block tokens",
        ),
    ],
    ids=["ledger-tokens", "ledger-documents", "shard-blocks", "split-tokens"],
)
def test_tampered_manifest_fails_the_check(
    bert_output: Path, tmp_path: Path, change, expected: str, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    shutil.copytree(bert_output, out)
    manifest = json.loads((out / "manifest.json").read_text())
    change(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    assert main(_args(out)) == 1
    text = capsys.readouterr().out
    assert expected in text and "FAILED" in text
    assert cli.main(["inspect", str(out), "--json"]) == 1
    summary = json.loads(capsys.readouterr().out)
    assert not summary["ok"] and any(expected in p for p in summary["problems"])


def test_cli_exit_codes(bert_output: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert cli.main(["inspect", str(bert_output), "--json", "--decode", "1", "--top", "3"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["ok"] and len(summary["samples"]) == 1
    assert len(summary["splits"]["train"]["top_tokens"]) == 3
    assert cli.main(["inspect", str(tmp_path)]) == 1
    assert "expected the manifest of a finished run" in capsys.readouterr().err
    assert cli.main(["inspect", str(bert_output), "--decode", "-1"]) == 2


def test_user_errors(bert_output: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="expected the manifest of a finished run, found none"):
        summarize(str(tmp_path))
    with pytest.raises(UsageError, match="expected counts >= 0, found -1/20"):
        summarize(str(bert_output), decode=-1)


# Pure helpers ------------------------------------------------------------------------------


@given(st.lists(st.integers(1, 2**40), max_size=50))
def test_log2_index_is_floor_log2(values: list[int]) -> None:
    got = histogram.log2_index(np.array(values, dtype=np.int64)).tolist()
    assert got == [v.bit_length() - 1 for v in values]


def test_log2_index_refuses_zero() -> None:
    with pytest.raises(ValueError, match="values >= 1, found 0"):
        histogram.log2_index(np.array([3, 0]))


@given(st.lists(st.integers(0, 300), min_size=1, max_size=200), st.sampled_from([1, 4, 8, 16]))
def test_exact_then_log2_keeps_every_value(values: list[int], exact: int) -> None:
    labels, counts = histogram.exact_then_log2(np.bincount(values), exact)
    assert sum(counts) == len(values) and counts[-1] > 0
    assert len(set(labels)) == len(labels)
    top = max(values)
    expected_bin = str(top) if top < exact else histogram.log2_label(top.bit_length() - 1)
    assert labels[-1] == expected_bin


@given(st.lists(st.integers(0, 10**6), min_size=1, max_size=30), st.integers(1, 60))
def test_bars_scale_to_the_largest_bin(counts: list[int], width: int) -> None:
    lines = histogram.draw([str(i) for i in range(len(counts))], counts, width=width)
    bars = [line.split("│")[1][:width].rstrip() for line in lines]
    peak = max(counts)
    for count, bar in zip(counts, bars, strict=True):
        assert (bar == "") == (count == 0)
        if peak and count == peak:
            assert bar == "█" * width
    parts = "▏▎▍▌▋▊▉"
    eighths = [8 * b.count("█") + sum(parts.index(c) + 1 for c in b if c in parts) for b in bars]
    order = sorted(range(len(counts)), key=lambda i: counts[i])
    assert all(eighths[i] <= eighths[j] for i, j in itertools.pairwise(order))


@given(st.integers(0, 10_000), st.integers(0, 50))
def test_sample_positions_are_evenly_spaced(total: int, n: int) -> None:
    picks = sample_positions(total, n)
    assert len(picks) == min(n, total) and picks == sorted(set(picks))
    assert all(0 <= p < total for p in picks)
    if len(picks) > 1:
        gaps = np.diff(picks)
        assert gaps.max() - gaps.min() <= 1


@given(
    st.lists(st.lists(st.sets(st.integers(0, 15), max_size=6), min_size=1, max_size=8), max_size=4)
)
def test_scan_lengths_follow_starts_across_batches(batches: list[list[set[int]]]) -> None:
    """Lengths are distances between consecutive starts of the whole stream, batch cuts aside."""
    scan = SplitScan("train", 16, 50, picks=[], base=0)
    positions, block0 = [], 0
    for batch in batches:
        starts = [sorted(s) for s in batch]
        offsets = np.cumsum([0] + [len(s) for s in starts]).astype(np.int32)
        values = np.array([v for s in starts for v in s], dtype=np.uint16)
        tokens = np.full((len(batch), 16), 7, dtype=np.uint32)
        scan.add(Blocks(tokens, values, offsets))
        positions += [(block0 + i) * 16 + v for i, s in enumerate(starts) for v in s]
        block0 += len(batch)
    assert scan.num_blocks == block0 and scan.num_doc_starts == len(positions)
    assert scan.docs_per_block.sum() == block0
    assert scan.num_lengths == max(len(positions) - 1, 0)
    assert scan.sum_lengths == (positions[-1] - positions[0] if positions else 0)
    assert scan.length_bins.sum() == scan.num_lengths and scan.bad_starts == 0
    assert scan.token_counts[7] == 16 * block0 and scan.token_counts.sum() == 16 * block0


def test_unreadable_or_missing_shard_fails_the_check(
    bert_output: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    shutil.copytree(bert_output, out)
    (out / "train/shard-00002.arrow").unlink()
    broken = out / "validation/shard-00003.arrow"
    broken.write_bytes(broken.read_bytes()[:-500])
    assert main(_args(out)) == 1
    text = capsys.readouterr().out
    assert "train: train/shard-00002.arrow is missing; run `pipeline verify`" in text
    assert "validation: validation/shard-00003.arrow does not read (" in text
    blocks = _manifest(out).splits["train"].num_blocks
    assert re.search(rf"train: shards hold [\d,]+ blocks, manifest {blocks:,}", text)


def test_uint32_concat_output_with_an_empty_split(
    dictwiki_one_file: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The other shapes: uint32 ids, concat packing, and a validation split with no blocks."""
    out = tmp_path / "out"
    config = make_config(
        dictwiki_one_file, BERT, out, packing="concat", validation_fraction=0.0, dtype="uint32"
    )
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    assert main(_args(out, shards=True, decode=1)) == 0
    text = capsys.readouterr().out
    assert "concat packing, uint32 ids" in text and "validation: 3 shards, 0 blocks" in text
    summary = summarize(str(out))
    train, validation = summary["splits"]["train"], summary["splits"]["validation"]
    assert train["num_blocks"] == _manifest(out).splits["train"].num_blocks > 0
    assert train["bytes_per_token"] < 4 and train["max_id"] < 30_522
    assert train["compression_ratio"] > 2  # zstd on uint32 ids that fit in 15 bits
    assert validation["num_blocks"] == 0 and validation["bytes_per_token"] is None
    assert validation["max_id"] is None and validation["docs_per_block"]["bins"] == []
    assert verify_output(str(out)) == []
