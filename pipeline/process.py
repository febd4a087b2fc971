"""One work unit end to end: read -> tokenize -> split -> pack -> write shards + sidecars.

This is the only place the stages are composed; the local runner and the Ray runner both call
`process_unit` and nothing else. A worker process loads its tokenizer once (from the run's
`OUT/tokenizer.json`, so every node sees the same bytes) and keeps it for later units.
"""

from __future__ import annotations

import os
import resource
from dataclasses import dataclass

import numpy as np
from tokenizers import Tokenizer

from pipeline import storage
from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.manifest import Ledger, Sidecar, shard_name, shard_uri, write_sidecar
from pipeline.packing import Blocks, Packer, PackSpec, build_stream
from pipeline.readers import BadInputError, is_invalid, read_documents
from pipeline.shards import ShardMeta, ShardWriter
from pipeline.sources import WorkUnit
from pipeline.split import SPLITS, assign_validation
from pipeline.tokenization import DocumentEncoder, TokenizerInfo, describe_tokenizer

TOKENIZER_FILE = "tokenizer.json"
# Test hook (issue: fault injection): the first attempt of this unit exits hard mid-way.
FAULT_UNIT_ENV = "PIPELINE_FAULT_KILL_UNIT"
FAULT_MARKER_ENV = "PIPELINE_FAULT_MARKER"


@dataclass(frozen=True, kw_only=True)
class UnitSummary:
    index: int
    path: str
    num_rows: int
    num_documents: int
    num_tokens: int
    text_bytes: int
    peak_rss_bytes: int  # of the worker process so far (Linux ru_maxrss is in KiB)


_ENCODERS: dict[tuple[str, str], DocumentEncoder] = {}


def peak_rss_bytes() -> int:
    """This process's peak resident memory. VmHWM belongs to the address space, so it starts
    afresh at exec; ru_maxrss does not (Linux keeps it across execve, so a process started
    from a big parent reports the parent's peak)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def remember_encoder(output: str, tok: Tokenizer, info: TokenizerInfo) -> None:
    """Seed this process's cache with the driver's own tokenizer: the local executor and the
    forked startup child then skip reloading it (DeBERTa-v3's 8.5 MB JSON: ~1.2 s)."""
    _ENCODERS[(output, info.sha256)] = DocumentEncoder(tok, info)


def load_encoder(output: str, dtype: str, expected_sha256: str) -> DocumentEncoder:
    key = (output, expected_sha256)
    if key not in _ENCODERS:
        # The file is the canonical JSON the driver hashed: its bytes are the identity.
        uri = storage.join(output, TOKENIZER_FILE)
        if not storage.exists(uri):
            raise DataError(
                f"{uri}: expected the run's tokenizer, written by the driver, found nothing on "
                "this worker; on a cluster of several nodes --output must be storage every node "
                "shares (s3:// or a shared filesystem)"
            )
        text = storage.read_bytes(uri).decode()
        tok = Tokenizer.from_str(text)
        info = describe_tokenizer(tok, dtype, canonical=text)
        if info.sha256 != expected_sha256:
            raise DataError(
                f"{storage.join(output, TOKENIZER_FILE)}: expected tokenizer sha256 "
                f"{expected_sha256}, found {info.sha256}; another run wrote into this folder, "
                "rerun with --overwrite"
            )
        _ENCODERS[key] = DocumentEncoder(tok, info)
    return _ENCODERS[key]


def pack_spec(config: RunConfig, info: TokenizerInfo) -> PackSpec:
    if config.packing == "concat":
        return PackSpec(
            block_size=config.block_size,
            doc_prefix=info.prefix_ids,
            doc_suffix=info.suffix_ids,
            frame=None,
        )
    cls_id, sep_id = info.special_ids.get("cls"), info.special_ids.get("sep")
    if cls_id is None or sep_id is None:
        raise DataError(
            f"tokenizer {config.tokenizer}: framed packing expected a CLS/SEP (or BOS/EOS) "
            "pair, found none in its post-processor or vocabulary; use --packing concat"
        )
    return PackSpec(
        block_size=config.block_size, doc_prefix=(), doc_suffix=(sep_id,), frame=(cls_id, sep_id)
    )


def shard_meta(config: RunConfig, info: TokenizerInfo, split: str) -> ShardMeta:
    return ShardMeta(
        block_size=config.block_size,
        dtype=info.dtype,
        packing=config.packing,
        split=split,
        tokenizer_sha256=info.sha256,
        vocab_size=info.vocab_size,
        special_ids=info.special_ids,
    )


@dataclass
class _UnitOutput:
    """What a unit builds per split: a packer (carries the remainder), a ledger, a writer."""

    packers: dict[str, Packer]
    ledgers: dict[str, Ledger]
    writers: dict[str, ShardWriter]

    @classmethod
    def empty(cls, unit: WorkUnit, config: RunConfig, info: TokenizerInfo) -> _UnitOutput:
        spec = pack_spec(config, info)
        return cls(
            packers={s: Packer(spec) for s in SPLITS},
            ledgers={s: Ledger() for s in SPLITS},
            writers={
                s: ShardWriter(
                    shard_uri(config.output, s, unit.index),
                    shard_meta(config, info, s),
                    config.batch_blocks,
                    config.compression_level,
                )
                for s in SPLITS
            },
        )


def process_unit(
    unit: WorkUnit, config: RunConfig, tokenizer_sha256: str, run_digest: str
) -> UnitSummary:
    encoder = load_encoder(config.output, config.dtype, tokenizer_sha256)
    built = _UnitOutput.empty(unit, config, encoder.info)
    unit_record: dict[str, object] = unit.to_dict()
    try:
        num_rows = _pack_documents(unit, config, encoder, built)
    except BadInputError as exc:
        if config.on_bad_file != "skip":
            raise
        # The unit contributes nothing (no half-read file in the data); the manifest lists it.
        built, num_rows = _UnitOutput.empty(unit, config, encoder.info), 0
        unit_record["error"] = str(exc)
    num_documents = num_tokens = 0
    for split in SPLITS:
        leftover, leftover_starts = built.packers[split].leftover()
        ledger = built.ledgers[split]
        ledger.num_carried_out = int(leftover.size)
        publish_shard(
            config.output, split, unit.index, built.writers[split], unit_record, run_digest,
            ledger, leftover, leftover_starts,
        )  # fmt: skip
        num_documents += ledger.num_documents_packed
        num_tokens += ledger.num_document_tokens
    return UnitSummary(
        index=unit.index,
        path=unit.path,
        num_rows=num_rows,
        num_documents=num_documents,
        num_tokens=num_tokens,
        text_bytes=unit.text_bytes,
        peak_rss_bytes=peak_rss_bytes(),
    )


def publish_shard(
    output: str,
    split: str,
    index: int,
    writer: ShardWriter,
    unit: dict[str, object],
    run_digest: str,
    ledger: Ledger,
    leftover: np.ndarray,
    leftover_starts: np.ndarray,
) -> Sidecar:
    """Commit one shard: the shard file (atomically), then its sidecar."""
    written = writer.close()
    sidecar = Sidecar(
        split=split,
        shard=shard_name(index),
        sha256=written.sha256,
        num_bytes=written.num_bytes,
        num_blocks=written.num_blocks,
        num_doc_starts=written.num_doc_starts,
        unit=unit,
        run_digest=run_digest,
        ledger=ledger,
        leftover_tokens=leftover.tolist(),
        leftover_starts=leftover_starts.tolist(),
    )
    write_sidecar(output, index, sidecar)
    return sidecar


def _pack_documents(
    unit: WorkUnit, config: RunConfig, encoder: DocumentEncoder, built: _UnitOutput
) -> int:
    """Read, split, encode and pack the unit's documents into `built`; returns rows read."""
    spec = pack_spec(config, encoder.info)
    num_rows = 0
    for batch_no, batch in enumerate(read_documents(unit, config.text_column, config.id_column)):
        num_rows += len(batch.texts)
        # A row without an id is keyed by its text: the split then does not depend on where
        # the corpus lies, and exact duplicates land in the same split.
        keys = [
            i if i is not None else (t or "") for i, t in zip(batch.ids, batch.texts, strict=True)
        ]
        is_validation = assign_validation(keys, config.validation_fraction)
        kept, reasons = _classify(batch.texts)
        ids, lengths = encoder.encode([batch.texts[k] for k in kept])
        kept_validation = is_validation[kept]
        for split, want in (("train", False), ("validation", True)):
            ledger = built.ledgers[split]
            in_split = is_validation == want
            ledger.num_documents += int(in_split.sum())
            for reason, rows in reasons.items():
                ledger.skipped[reason] += int(in_split[rows].sum()) if rows else 0
            doc_mask = kept_validation == want
            doc_lengths = lengths[doc_mask]
            if not doc_lengths.size:
                continue
            token_mask = np.repeat(doc_mask, lengths)
            stream, starts = build_stream(
                ids[token_mask], doc_lengths, spec.doc_prefix, spec.doc_suffix
            )
            blocks = built.packers[split].add(stream, starts)
            built.writers[split].write(blocks)
            _count(ledger, spec, doc_lengths, blocks)
        if batch_no == 0:
            _maybe_inject_fault(unit.index)
    return num_rows


def _classify(texts: list[str | None]) -> tuple[list[int], dict[str, list[int]]]:
    """Rows to encode, and rows skipped by reason (null, empty or whitespace, invalid)."""
    kept: list[int] = []
    reasons: dict[str, list[int]] = {"null_text": [], "empty_text": [], "invalid_utf8": []}
    for k, text in enumerate(texts):
        if text is None:
            reasons["null_text"].append(k)
        elif is_invalid(text):
            reasons["invalid_utf8"].append(k)
        elif not text or text.isspace():
            reasons["empty_text"].append(k)
        else:
            kept.append(k)
    return kept, reasons


def _count(ledger: Ledger, spec: PackSpec, doc_lengths: np.ndarray, blocks: Blocks) -> None:
    ledger.num_documents_packed += int(doc_lengths.size)
    ledger.num_document_tokens += int(doc_lengths.sum())
    ledger.num_special_tokens += int(doc_lengths.size) * spec.doc_special_tokens
    ledger.num_special_tokens += blocks.num_blocks * spec.frame_tokens
    ledger.num_block_tokens += blocks.num_blocks * spec.block_size


def _maybe_inject_fault(index: int) -> None:
    target, marker = os.environ.get(FAULT_UNIT_ENV), os.environ.get(FAULT_MARKER_ENV)
    if target is None or marker is None or int(target) != index or os.path.exists(marker):
        return
    with open(marker, "w") as f:
        f.write(f"killed unit {index} in pid {os.getpid()}\n")
    os._exit(137)
