"""One work unit end to end: read -> tokenize -> split -> pack -> write shards + sidecars.

This is the only place the stages are composed; the local runner and the Ray runner both call
`process_unit` and nothing else. A worker process loads its tokenizer once (from the run's
`OUT/tokenizer.json`, so every node sees the same bytes) and keeps it for later units.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.core.ledger import Ledger
from pipeline.core.packing import Blocks, Packer, PackSpec, build_stream
from pipeline.core.split import SPLITS, assign_validation
from pipeline.format.paths import shard_uri
from pipeline.format.shards import ShardWriter
from pipeline.ingest.readers import BadInputError, is_invalid, read_documents
from pipeline.ingest.tokenization import DocumentEncoder, TokenizerInfo
from pipeline.ingest.units import WorkUnit
from pipeline.run.config import RunConfig
from pipeline.run.encoders import load_encoder
from pipeline.run.faults import maybe_inject_fault
from pipeline.run.publish import pack_spec, publish_shard, shard_meta
from pipeline.run.summary import UnitSummary, peak_rss_bytes


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
    unit_record: dict[str, object] = unit.to_dict()
    built, num_rows, left_out = _pack_readable(unit, config, encoder)
    if left_out and len(unit.parts) == 1:
        unit_record["error"] = left_out[0]["reason"]
    elif left_out:
        unit_record["skipped"] = left_out
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


def _pack_readable(
    unit: WorkUnit, config: RunConfig, encoder: DocumentEncoder
) -> tuple[_UnitOutput, int, list[dict[str, str]]]:
    """Pack the unit; under --on-bad-file skip, a file that does not read is left out and the
    unit redone from scratch without it (the good files of a unit of several small files are
    kept). Returns (what was built, rows read, [{"path", "reason"}] of the files left out).

    Files are read in order and the first damaged one fails first, so what is left out does
    not depend on the number of workers.
    """
    left_out: list[dict[str, str]] = []
    todo = unit
    while True:
        built = _UnitOutput.empty(unit, config, encoder.info)
        try:
            return built, _pack_documents(todo, config, encoder, built), left_out
        except BadInputError as exc:
            if config.on_bad_file != "skip":
                raise
            bad = exc.path if exc.path in {p.path for p in todo.parts} else todo.path
            left_out.append({"path": bad, "reason": str(exc)})
            rest = [p for p in todo.parts if p.path != bad]
            if not rest:  # nothing readable: no half-read file in the data
                return _UnitOutput.empty(unit, config, encoder.info), 0, left_out
            todo = replace(
                unit, path=rest[0].path, row_start=rest[0].row_start, row_end=rest[0].row_end,
                more=tuple(rest[1:]),
            )  # fmt: skip


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
            maybe_inject_fault(unit.index)
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
