"""Run the pipeline: plan units, skip finished ones, run the rest, stitch leftovers, commit.

Execution is pluggable (`Executor`): `LocalExecutor` runs units in this process (tests,
debugging); `pipeline.ray_runner.RayExecutor` runs them as Ray tasks. Both call
`process.process_unit` and nothing else. The stitching step packs every unit's leftover, in
unit order, into one last shard per split, so a whole run drops less than one block per split.
The manifest is written last; timings go to a separate file so the manifest is deterministic.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Protocol, TextIO

import numpy as np

from pipeline import __version__, storage
from pipeline.config import RunConfig
from pipeline.errors import DataError
from pipeline.manifest import (
    MANIFEST_NAME,
    Ledger,
    Sidecar,
    build_manifest,
    read_sidecar,
    shard_uri,
    write_json_atomic,
    write_sidecar,
)
from pipeline.output_folder import (
    check_not_inside_inputs,
    claim,
    finished_sidecars,
    run_identity,
)
from pipeline.packing import Packer
from pipeline.process import (
    TOKENIZER_FILE,
    UnitSummary,
    pack_spec,
    process_unit,
    shard_meta,
)
from pipeline.progress import Progress
from pipeline.shards import ShardWriter
from pipeline.sources import InputFile, WorkUnit, describe_input, list_inputs, plan_units
from pipeline.split import SPLITS
from pipeline.tokenization import TokenizerInfo, canonical_json, describe_tokenizer, load_tokenizer


class Executor(Protocol):
    def run(
        self, units: list[WorkUnit], config: RunConfig, tokenizer_sha256: str, digest: str
    ) -> Iterator[UnitSummary]: ...


class LocalExecutor:
    """Runs units one after the other in this process."""

    def run(
        self, units: list[WorkUnit], config: RunConfig, tokenizer_sha256: str, digest: str
    ) -> Iterator[UnitSummary]:
        for unit in units:
            yield process_unit(unit, config, tokenizer_sha256, digest)


@dataclass(frozen=True, kw_only=True)
class RunResult:
    manifest: dict[str, Any]
    num_units: int
    num_units_run: int
    seconds: float
    num_tokens: int


def run_pipeline(
    config: RunConfig,
    executor: Executor,
    *,
    overwrite: bool = False,
    progress_stream: TextIO | None = sys.stderr,
) -> RunResult:
    started = time.monotonic()
    tok = load_tokenizer(config.tokenizer)
    tok_text = canonical_json(tok)
    info = describe_tokenizer(tok, config.dtype, config.tokenizer, canonical=tok_text)
    pack_spec(config, info)  # fail early if framed packing is impossible
    paths = list_inputs(config.inputs)
    check_not_inside_inputs(config.output, paths, config.inputs)
    files, skipped_files = _describe_inputs(paths, config)
    units = plan_units(files, config.unit_bytes)
    inputs = [{"path": f.path, "num_bytes": f.num_bytes, "num_rows": f.num_rows} for f in files]
    digest = claim(config.output, run_identity(config.to_dict(), info.sha256, inputs), overwrite)
    tok_uri = storage.join(config.output, TOKENIZER_FILE)
    if not storage.exists(tok_uri):
        storage.write_bytes_atomic(tok_uri, tok_text.encode())

    done = {u.index: finished_sidecars(config.output, u.index, digest) for u in units}
    pending = [u for u in units if done[u.index] is None]
    progress = None
    if progress_stream is not None:
        progress = Progress(len(pending), sum(u.text_bytes for u in pending), progress_stream)
        if len(pending) < len(units):
            progress_stream.write(f"resuming: {len(units) - len(pending)} units already done\n")
    num_tokens = peak_rss = 0
    rows_by_path: dict[str, int] = {}
    for summary in executor.run(pending, config, info.sha256, digest):
        num_tokens += summary.num_tokens
        peak_rss = max(peak_rss, summary.peak_rss_bytes)
        if progress:
            progress.update(summary)
    sidecars = {split: [] for split in SPLITS}
    for unit in units:
        # Units done before were checked (sha256) above; units run now are trusted as written.
        cars = done[unit.index] or _sidecars_of(config.output, unit.index, digest)
        if cars is None:
            raise DataError(
                f"{config.output}: expected finished shards for unit {unit.index} "
                f"({unit.path}), found them missing or altered after the unit ran; rerun"
            )
        for split in SPLITS:
            sidecars[split].append(cars[split])
        ledger = cars["train"].ledger
        ledger_v = cars["validation"].ledger
        rows_by_path[unit.path] = (
            rows_by_path.get(unit.path, 0) + ledger.num_documents + ledger_v.num_documents
        )
    for split in SPLITS:
        sidecars[split].append(
            stitch_leftovers(config, info, split, sidecars[split], digest, len(units))
        )
    for entry in inputs:
        entry["num_rows"] = rows_by_path.get(entry["path"], 0)
    skipped_files += [
        {"path": car.unit["path"], "reason": car.unit["error"]}
        for car in sidecars["train"]
        if "error" in car.unit
    ]
    manifest = build_manifest(
        # Without `output`: a dataset is relocatable, and runs into two folders compare equal.
        config={k: v for k, v in config.to_dict().items() if k != "output"},
        tokenizer=_tokenizer_record(info),
        inputs=inputs,
        skipped_files=skipped_files,
        num_units=len(units),
        sidecars=sidecars,
        pipeline_version=__version__,
    )
    write_json_atomic(storage.join(config.output, MANIFEST_NAME), manifest)
    seconds = time.monotonic() - started
    write_json_atomic(
        storage.join(config.output, "timings.json"),
        {
            "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "seconds": round(seconds, 3),
            "units_run": len(pending),
            "document_tokens_this_run": num_tokens,
            "tokens_per_second": round(num_tokens / max(seconds, 1e-9), 1),
            "peak_worker_rss_bytes": peak_rss,
        },
    )
    return RunResult(
        manifest=manifest,
        num_units=len(units),
        num_units_run=len(pending),
        seconds=seconds,
        num_tokens=num_tokens,
    )


def _sidecars_of(output: str, index: int, digest: str) -> dict[str, Sidecar] | None:
    cars = {split: read_sidecar(output, split, index) for split in SPLITS}
    if any(c is None or c.run_digest != digest for c in cars.values()):
        return None
    return cars  # type: ignore[return-value]


def _describe_inputs(paths: list[str], config: RunConfig) -> tuple[list[InputFile], list[dict]]:
    files, skipped = [], []
    for path in paths:
        try:
            files.append(describe_input(path, config.text_column, config.id_column))
        except DataError as exc:
            if config.on_bad_file == "fail":
                raise
            skipped.append({"path": path, "reason": str(exc)})
    if not files:
        raise DataError(
            f"--input: expected at least one readable file, found none of {len(paths)} "
            f"usable (skipped: {json.dumps(skipped)[:300]})"
        )
    return files, skipped


def stitch_leftovers(
    config: RunConfig,
    info: TokenizerInfo,
    split: str,
    cars: list[Sidecar],
    digest: str,
    index: int,
) -> Sidecar:
    """Pack the units' leftovers, in unit order, into the split's last shard."""
    spec = pack_spec(config, info)
    streams, starts, offset = [], [], 0
    for car in cars:
        streams.append(np.asarray(car.leftover_tokens, dtype=np.uint32))
        starts.append(np.asarray(car.leftover_starts, dtype=np.int64) + offset)
        offset += len(car.leftover_tokens)
    stream = np.concatenate(streams) if streams else np.zeros(0, np.uint32)
    packer = Packer(spec)
    blocks = packer.add(stream, np.concatenate(starts) if starts else np.zeros(0, np.int64))
    dropped, _ = packer.leftover()
    writer = ShardWriter(
        shard_uri(config.output, split, index),
        shard_meta(config, info, split),
        config.batch_blocks,
        config.compression_level,
    )
    writer.write(blocks)
    written = writer.close()
    ledger = Ledger(
        num_carried_in=int(stream.size),
        num_special_tokens=blocks.num_blocks * spec.frame_tokens,
        num_block_tokens=blocks.num_blocks * spec.block_size,
        num_dropped_tokens=int(dropped.size),
    )
    car = Sidecar(
        split=split,
        shard=shard_uri("", split, index).rsplit("/", 1)[-1],
        sha256=written.sha256,
        num_bytes=written.num_bytes,
        num_blocks=written.num_blocks,
        num_doc_starts=written.num_doc_starts,
        unit={"index": index, "kind": "tail"},
        run_digest=digest,
        ledger=ledger,
        leftover_tokens=[],
        leftover_starts=[],
    )
    write_sidecar(config.output, index, car)
    return car


def _tokenizer_record(info: TokenizerInfo) -> dict[str, Any]:
    return {
        "file": TOKENIZER_FILE,
        "sha256": info.sha256,
        "vocab_size": info.vocab_size,
        "dtype": info.dtype,
        "prefix_ids": list(info.prefix_ids),
        "suffix_ids": list(info.suffix_ids),
        "special_ids": info.special_ids,
        "all_special_ids": list(info.all_special_ids),
    }
