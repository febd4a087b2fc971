"""`pipeline inspect OUT`: statistics, ledger check and sample blocks of a finished output.

Shards are read one record batch at a time and folded into per-split accumulators whose size
depends on the vocabulary and block size only (token counts, two histograms), so a 4 B-token
output costs the same memory as a small one. A failed check (ledger, counts, ids) exits 1.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
from tokenizers import Tokenizer

from pipeline.commands.inspection_report import render_text
from pipeline.commands.verification import ledger_problems
from pipeline.core import histogram
from pipeline.core.packing import Blocks
from pipeline.errors import DataError, UsageError, brief
from pipeline.format import storage
from pipeline.format.manifest import Manifest, SplitRecord, TokenizerRecord, load_manifest
from pipeline.format.paths import TOKENIZER_FILE
from pipeline.format.shards import ShardReader
from pipeline.ingest.tokenization import canonical_json

LENGTH_MEANING = (
    "tokens between consecutive document starts in the split's block stream (shards in "
    "manifest order; block framing included; the split's last document not counted)"
)
DOCS_PER_BLOCK_MEANING = "blocks by how many documents start in them"


class SplitScan:
    """One split's statistics, accumulated batch by batch; memory O(vocabulary + block size).

    `picks` are global block indexes (over all splits) to keep as samples; `base` is how many
    blocks came before this split.
    """

    def __init__(self, split: str, block_size: int, vocab_size: int, picks: list[int], base: int):
        self.split, self.block_size, self.vocab_size = split, block_size, vocab_size
        self.picks, self.base = picks, base
        self.token_counts = np.zeros(vocab_size, dtype=np.int64)
        self.out_of_range = self.num_blocks = self.num_doc_starts = self.bad_starts = 0
        self.max_id = -1
        self.docs_per_block = np.zeros(block_size + 1, dtype=np.int64)
        self.length_bins = np.zeros(64, dtype=np.int64)  # bin k: lengths in [2^k, 2^(k+1))
        self.num_lengths = self.sum_lengths = self.max_length = 0
        self._last_start: int | None = None  # absolute position in the split's token stream
        self.shards: list[dict[str, Any]] = []
        self.samples: list[dict[str, Any]] = []

    def add_shard(self, reader: ShardReader, file: str, manifest_blocks: int) -> None:
        blocks0, starts0 = self.num_blocks, self.num_doc_starts
        for b in range(reader.num_batches):
            blocks = reader.read_batch(b)
            lo = self.base + self.num_blocks
            for p in (p for p in self.picks if lo <= p < lo + blocks.num_blocks):
                row, ids = self.num_blocks - blocks0 + p - lo, blocks.tokens[p - lo].tolist()
                block = self.num_blocks + p - lo
                self.samples.append(
                    {"split": self.split, "file": file, "row": row, "block": block, "ids": ids}
                )
            self.add(blocks)
        n, starts = self.num_blocks - blocks0, self.num_doc_starts - starts0
        size = storage.size_of(reader.uri)
        row = dict(
            file=file, blocks=n, doc_starts=starts, bytes=size, manifest_blocks=manifest_blocks
        )
        self.shards.append(row)

    def add(self, blocks: Blocks) -> None:
        n = blocks.num_blocks
        if not n:
            return
        ids = blocks.tokens.ravel()
        self.max_id = max(self.max_id, int(ids.max()))
        counts = np.bincount(ids, minlength=self.vocab_size)
        self.out_of_range += int(counts[self.vocab_size :].sum())
        self.token_counts += counts[: self.vocab_size]
        per_block = np.diff(blocks.start_offsets.astype(np.int64))
        capped = np.minimum(per_block, self.block_size)
        self.docs_per_block += np.bincount(capped, minlength=self.block_size + 1)
        rows = np.repeat(np.arange(n, dtype=np.int64), per_block)
        starts = (self.num_blocks + rows) * self.block_size + blocks.start_values.astype(np.int64)
        if self._last_start is not None:
            starts = np.concatenate([[self._last_start], starts])
        if starts.size:
            self._last_start = int(starts[-1])
            lengths = np.diff(starts)
            self.bad_starts += int((lengths < 1).sum())
            lengths = lengths[lengths >= 1]
            if lengths.size:
                self.length_bins += np.bincount(histogram.log2_index(lengths), minlength=64)
                self.num_lengths += int(lengths.size)
                self.sum_lengths += int(lengths.sum())
                self.max_length = max(self.max_length, int(lengths.max()))
        self.num_blocks += n
        self.num_doc_starts += int(blocks.start_values.size)


def sample_positions(total: int, n: int) -> list[int]:
    """n block indexes evenly spaced over `total` (the middles of n equal stretches)."""
    n = min(max(n, 0), total)
    return [(2 * k + 1) * total // (2 * n) for k in range(n)]


def summarize(output: str, decode: int = 0, top: int = 20) -> dict[str, Any]:
    """Everything `inspect` reports, as a JSON-able dict; `problems` lists failed checks."""
    if decode < 0 or top < 0:
        raise UsageError(f"--decode/--top: expected counts >= 0, found {decode}/{top}")
    return _summarize(output, load_manifest(output), decode, top)


def _summarize(output: str, manifest: Manifest, decode: int, top: int) -> dict[str, Any]:
    tokinfo = manifest.tokenizer
    block_size, vocab_size = manifest.block_size, tokinfo.vocab_size
    tok, problems = _load_run_tokenizer(output, tokinfo.sha256)
    picks = sample_positions(manifest.num_blocks, decode)
    samples: list[dict[str, Any]] = []
    splits: dict[str, Any] = {}
    base = 0
    for split, entry in manifest.splits.items():
        scan = SplitScan(split, block_size, vocab_size, picks, base)
        for shard in entry.shards:
            uri = shard.uri(output)
            if not storage.exists(uri):
                problems.append(f"{split}: {shard.file} is missing; run `pipeline verify`")
                continue
            try:
                reader = ShardReader(uri)
                if reader.meta.block_size != block_size:
                    raise DataError(f"block_size {reader.meta.block_size}, not {block_size}")
                scan.add_shard(reader, shard.file, shard.num_blocks)
            except (DataError, pa.ArrowException, OSError) as exc:  # report it, go on
                problems.append(f"{split}: {shard.file} does not read ({brief(exc, 200)})")
        checks = split_checks(entry, scan)
        problems += [f"{split}: {c}" for c in checks]
        splits[split] = _split_summary(entry, scan, checks, tok, tokinfo, top)
        samples += scan.samples
        base += scan.num_blocks
    for s in samples:
        s["text"] = tok.decode(s.pop("ids"), skip_special_tokens=False)
    return {
        "output": output,
        "format_version": manifest.format_version,
        "pipeline_version": manifest.pipeline_version,
        "block_size": block_size,
        "packing": manifest.packing,
        "tokenizer": {
            "sha256": tokinfo.sha256,
            "vocab_size": tokinfo.vocab_size,
            "dtype": tokinfo.dtype,
            "special_ids": tokinfo.special_ids,
        },
        "inputs": [i.to_dict() for i in manifest.inputs],
        "skipped_files": [s.to_dict() for s in manifest.skipped_files],
        "num_units": manifest.num_units,
        "splits": splits,
        "samples": samples,
        "problems": problems,
        "ok": not problems,
    }


def _load_run_tokenizer(output: str, sha256: str) -> tuple[Tokenizer, list[str]]:
    """OUT/tokenizer.json, and a problem when it is not the tokenizer the manifest names (an
    edited file would decode the samples with the wrong vocabulary)."""
    uri = storage.join(output, TOKENIZER_FILE)
    fix = "delete it and rerun the same `pipeline run` command to rewrite it"
    try:
        tok = Tokenizer.from_str(storage.read_bytes(uri).decode())
    except Exception as exc:  # the tokenizers library raises bare Exception on bad JSON
        raise DataError(
            f"{uri}: expected the run's tokenizer, found a file that does not load "
            f"({brief(exc, 120)}); {fix}"
        ) from exc
    found = hashlib.sha256(canonical_json(tok).encode()).hexdigest()
    if found == sha256:
        return tok, []
    return tok, [
        f"{TOKENIZER_FILE}: canonical sha256 {found[:16]}… differs from the manifest's "
        f"{sha256[:16]}… (samples below are decoded with it); {fix}"
    ]


def split_checks(entry: SplitRecord, scan: SplitScan) -> list[str]:
    """The manifest's ledger and counts against each other and against the shards read."""
    checks = ledger_problems(entry, scan.block_size)
    for row in scan.shards:
        if row["blocks"] != row["manifest_blocks"]:
            checks.append(
                f"{row['file']} holds {row['blocks']:,} blocks, the manifest says "
                f"{row['manifest_blocks']:,}"
            )
    if scan.num_blocks != entry.num_blocks:
        checks.append(f"shards hold {scan.num_blocks:,} blocks, manifest {entry.num_blocks:,}")
    if scan.max_id >= scan.vocab_size:
        checks.append(f"{scan.out_of_range:,} ids >= vocabulary size {scan.vocab_size:,}")
    if scan.bad_starts:
        checks.append(f"{scan.bad_starts:,} document starts not after the previous one")
    return checks


def _split_summary(
    entry: SplitRecord,
    scan: SplitScan,
    checks: list[str],
    tok: Tokenizer,
    tokinfo: TokenizerRecord,
    top: int,
) -> dict[str, Any]:
    ledger = entry.ledger
    tokens = scan.num_blocks * scan.block_size
    raw = tokens * np.dtype(tokinfo.dtype).itemsize + scan.num_doc_starts * 2  # uint16 starts
    on_disk = sum(r["bytes"] for r in scan.shards)
    schema = dict.fromkeys(("blocks", "doc_starts", "bytes", "manifest_blocks"), pl.Int64)
    shards = pl.DataFrame(scan.shards, schema={"file": pl.String, **schema}).with_columns(
        tokens=pl.col("blocks") * scan.block_size,
        # A shard may hold no blocks (a small split's tail): no ratio rather than inf in JSON.
        bytes_per_token=pl.when(pl.col("blocks") > 0).then(
            pl.col("bytes") / (pl.col("blocks") * scan.block_size)
        ),
    )
    special = [i for i in tokinfo.all_special_ids if i < scan.vocab_size]
    unk = tokinfo.special_ids.get("unk")
    return {
        "shards": shards.to_dicts(),
        "num_shards": len(entry.shards),
        "num_blocks": scan.num_blocks,
        "num_tokens": tokens,
        "num_documents": ledger.num_documents_packed,
        "num_documents_read": ledger.num_documents,
        "skipped": ledger.skipped,
        "num_doc_starts": scan.num_doc_starts,
        "num_bytes": on_disk,
        "bytes_per_token": on_disk / tokens if tokens else None,
        "uncompressed_bytes": raw,
        "compression_ratio": raw / on_disk if on_disk else None,
        "ledger": {**ledger.to_dict(), "problems": checks},
        "docs_per_block": {
            "measures": DOCS_PER_BLOCK_MEANING,
            "mean": scan.num_doc_starts / scan.num_blocks if scan.num_blocks else None,
            "bins": _bins(*histogram.exact_then_log2(scan.docs_per_block)),
        },
        "document_length": {
            "measures": LENGTH_MEANING,
            "count": scan.num_lengths,
            "mean": scan.sum_lengths / scan.num_lengths if scan.num_lengths else None,
            "max": scan.max_length,
            "bins": _bins(*histogram.log2_bins(scan.length_bins)),
        },
        "top_tokens": top_tokens(scan.token_counts, tok, top),
        "special_rate": int(scan.token_counts[special].sum()) / tokens if tokens else None,
        "unknown_rate": int(scan.token_counts[unk]) / tokens
        if tokens and unk is not None
        else None,
        "max_id": scan.max_id if scan.num_blocks else None,
        "vocab_size": scan.vocab_size,
    }


def _bins(labels: list[str], counts: list[int]) -> list[dict[str, Any]]:
    frame = pl.DataFrame(
        {"bin": labels, "count": counts}, schema={"bin": pl.String, "count": pl.Int64}
    )
    return frame.with_columns(share=pl.col("count") / max(sum(counts), 1)).to_dicts()


def top_tokens(counts: np.ndarray, tok: Tokenizer, top: int) -> list[dict[str, Any]]:
    """The `top` most frequent ids (ties by id), with token string, decoded text and share."""
    frame = (
        pl.DataFrame({"id": np.arange(counts.size), "count": counts})
        .filter(pl.col("count") > 0)
        .sort(["count", "id"], descending=[True, False])
        .head(top)
        .with_columns(share=pl.col("count") / max(int(counts.sum()), 1))
    )
    ids = frame["id"].to_list()
    return frame.with_columns(
        token=pl.Series([tok.id_to_token(i) or "" for i in ids], dtype=pl.String),
        text=pl.Series([tok.decode([i], skip_special_tokens=False) for i in ids], dtype=pl.String),
    ).to_dicts()


def main(args: argparse.Namespace) -> int:
    summary = summarize(args.output, decode=args.decode, top=args.top)
    if args.json:
        print(json.dumps(summary, indent=1, ensure_ascii=False))
    else:
        print(render_text(summary, shards=args.shards))
    return 0 if summary["ok"] else 1
