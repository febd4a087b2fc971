"""Run the pipeline: plan units, skip finished ones, run the rest, stitch leftovers, commit.

Execution is pluggable (`Executor`): `pipeline.run.worker_pool.ProcessExecutor` runs units in
forked worker processes (the default on one machine); `pipeline.run.ray_runner.RayExecutor` runs
them as Ray tasks (clusters); `LocalExecutor` runs them in this process (tests, debugging). All
call `process.process_unit` and nothing else. The stitching step packs every unit's leftover, in
unit order, into one last shard per split, so a whole run drops less than one block per split.
The manifest is written last; timings go to a separate file so the manifest is deterministic.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Protocol, TextIO

from pipeline import __version__
from pipeline.core.split import SPLITS
from pipeline.errors import DataError, UsageError, brief
from pipeline.format import storage
from pipeline.format.manifest import (
    InputRecord,
    Manifest,
    SkippedFile,
    TokenizerRecord,
    build_manifest,
    write_manifest,
)
from pipeline.format.paths import TIMINGS_FILE, TOKENIZER_FILE
from pipeline.format.records import write_json_atomic
from pipeline.format.sidecars import Sidecar
from pipeline.ingest.sources import (
    list_inputs,
    refuse_unread,
)
from pipeline.ingest.tokenization import (
    TokenizerInfo,
    canonical_json,
    describe_tokenizer,
    load_tokenizer,
)
from pipeline.ingest.units import WorkUnit, plan_units
from pipeline.run.config import RunConfig
from pipeline.run.encoders import remember_encoder
from pipeline.run.output_folder import (
    check_claimable,
    check_output_apart,
    claim,
    exclusive,
    finished_units,
    remove_own_leftovers,
    run_identity,
    sidecars_in_order,
)
from pipeline.run.planning import (
    check_real_work,
    count_rows,
    describe_inputs,
    skipped_units,
    with_absolute_paths,
)
from pipeline.run.process import process_unit
from pipeline.run.progress import Progress
from pipeline.run.publish import pack_spec
from pipeline.run.stitching import TailStitcher
from pipeline.run.summary import UnitSummary


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


def executor_for(
    backend: str,
    *,
    workers: int | None,
    ray_address: str | None,
    threads_per_worker: int,
    forward_credentials: bool = False,
    log: TextIO | None = None,
) -> Executor:
    """`pipeline run --backend`: processes (the default on one machine), ray, or local."""
    if backend == "local":
        return LocalExecutor()
    if backend == "ray":
        from pipeline.run.ray_runner import RayExecutor  # Ray imports slowly: only when asked

        return RayExecutor(
            workers=workers,
            address=ray_address,
            threads_per_worker=threads_per_worker,
            forward_credentials=forward_credentials,
            log=log,
        )
    if backend == "processes":
        from pipeline.run.worker_pool import ProcessExecutor

        return ProcessExecutor(workers=workers, threads_per_worker=threads_per_worker)
    raise UsageError(
        f"--backend: expected processes, ray or local, found {backend!r}; processes is the "
        "default on one machine"
    )


@dataclass(frozen=True, kw_only=True)
class RunResult:
    manifest: Manifest
    num_units: int
    num_units_run: int
    seconds: float
    num_tokens: int
    notes: tuple[str, ...] = ()  # said once by the CLI: things the user will want to know


def run_pipeline(
    config: RunConfig,
    executor: Executor,
    *,
    overwrite: bool = False,
    progress_stream: TextIO | None = sys.stderr,
) -> RunResult:
    started = time.monotonic()
    config = with_absolute_paths(config)
    listing = list_inputs(config.inputs)
    paths = listing.files
    check_output_apart(config.output, config.inputs, paths)
    if config.on_bad_file == "fail":
        refuse_unread(listing.not_read)
    tok = load_tokenizer(config.tokenizer)
    tok_text = canonical_json(tok)
    info = describe_tokenizer(tok, config.dtype, config.tokenizer, canonical=tok_text)
    pack_spec(config, info)  # fail early if framed packing is impossible
    files, skipped_files = describe_inputs(paths, config)
    skipped_files = listing.not_read + skipped_files
    units = plan_units(files, config.unit_bytes)
    inputs = [{"path": f.path, "num_bytes": f.num_bytes, "num_rows": f.num_rows} for f in files]
    check_claimable(config.output)
    with exclusive(config.output):
        identity = run_identity(config.to_dict(), info.sha256, inputs)
        digest = claim(config.output, identity, overwrite)
        tok_uri = storage.join(config.output, TOKENIZER_FILE)
        _write_tokenizer(tok_uri, tok_text.encode())
        remember_encoder(config.output, tok, info)
        done = finished_units(config.output, units, digest)
        pending = [u for u in units if done[u.index] is None]
        num_tokens, peak_rss = _execute(executor, pending, len(units), config, info, digest,
                                        progress_stream)  # fmt: skip
        remove_own_leftovers(config.output)  # every worker stopped: a killed one's temporaries
        sidecars = _collect(config, info, units, done, digest)
        manifest = build_manifest(
            # Without `output`: a dataset is relocatable, and runs into two folders compare equal.
            config={k: v for k, v in config.to_dict().items() if k != "output"},
            tokenizer=_tokenizer_record(info),
            inputs=[InputRecord(**i) for i in count_rows(inputs, units, sidecars)],
            skipped_files=[SkippedFile(**s) for s in skipped_files + skipped_units(sidecars)],
            num_units=len(units),
            sidecars=sidecars,
            pipeline_version=__version__,
        )
        check_real_work(config, manifest)
        write_manifest(config.output, manifest)
    seconds = time.monotonic() - started
    _write_timings(config.output, seconds, len(pending), num_tokens, peak_rss)
    return RunResult(
        manifest=manifest,
        num_units=len(units),
        num_units_run=len(pending),
        seconds=seconds,
        num_tokens=num_tokens,
        notes=_notes(config, info),
    )


def _notes(config: RunConfig, info: TokenizerInfo) -> tuple[str, ...]:
    if info.special_ids.get("mask") is not None:
        return ()
    return (
        f"tokenizer {config.tokenizer} has no mask token ([MASK] or <mask>): the shards are "
        "fine, but MLM training (`pipeline train`) will need one; add it to the tokenizer "
        "(tokenizer.add_special_tokens) and rerun with that tokenizer",
    )


def _execute(
    executor: Executor,
    pending: list[WorkUnit],
    num_units: int,
    config: RunConfig,
    info: TokenizerInfo,
    digest: str,
    progress_stream: TextIO | None,
) -> tuple[int, int]:
    """Run the pending units; (document tokens, largest worker peak RSS)."""
    progress = None
    if progress_stream is not None:
        progress = Progress(len(pending), sum(u.text_bytes for u in pending), progress_stream)
        if len(pending) < num_units:
            progress_stream.write(f"resuming: {num_units - len(pending)} units already done\n")
    num_tokens = peak_rss = 0
    for summary in executor.run(pending, config, info.sha256, digest):
        num_tokens += summary.num_tokens
        peak_rss = max(peak_rss, summary.peak_rss_bytes)
        if progress:
            progress.update(summary)
    return num_tokens, peak_rss


def _collect(
    config: RunConfig,
    info: TokenizerInfo,
    units: list[WorkUnit],
    done: dict[int, dict[str, Sidecar] | None],
    digest: str,
) -> dict[str, list[Sidecar]]:
    """Every unit's sidecars in unit order, plus the stitched tail shard per split.

    Leftovers are packed as each sidecar is read, and dropped from the sidecar kept for the
    manifest: what the driver holds per unit is that summary only (README, "At scale").
    """
    sidecars: dict[str, list[Sidecar]] = {split: [] for split in SPLITS}
    tails = {split: TailStitcher(config, info, split, digest, len(units)) for split in SPLITS}
    # Units done before were checked (sha256) above; units run now are trusted as written.
    run_now = sidecars_in_order(config.output, [u.index for u in units if not done[u.index]],
                                digest)  # fmt: skip
    for unit in units:
        cars = done.pop(unit.index, None) or next(run_now)[1]
        if cars is None:
            raise DataError(
                f"{config.output}: expected finished shards for unit {unit.index} "
                f"({unit.path}), found them missing or altered after the unit ran; rerun the "
                "same command to redo it"
            )
        for split in SPLITS:
            tails[split].add(cars[split])
            sidecars[split].append(replace(cars[split], leftover_tokens=[], leftover_starts=[]))
    for split in SPLITS:
        sidecars[split].append(tails[split].finish())
    return sidecars


def _write_timings(output: str, seconds: float, units_run: int, tokens: int, rss: int) -> None:
    """After the manifest, and not part of it: a failure here does not fail the run."""
    try:
        write_json_atomic(
            storage.join(output, TIMINGS_FILE),
            {
                "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "seconds": round(seconds, 3),
                "units_run": units_run,
                "document_tokens_this_run": tokens,
                "tokens_per_second": round(tokens / max(seconds, 1e-9), 1),
                "peak_worker_rss_bytes": rss,
            },
        )
    except OSError as exc:
        print(f"warning: timings.json not written ({brief(exc)}); the run is complete",
              file=sys.stderr)  # fmt: skip


def _write_tokenizer(uri: str, canonical: bytes) -> None:
    """OUT/tokenizer.json is a file the run wrote: rewritten when missing, damaged or edited
    (its bytes differ from the canonical text the run's tokenizer sha256 was taken of)."""
    if not storage.exists(uri) or storage.read_bytes(uri) != canonical:
        storage.write_bytes_atomic(uri, canonical)


def _tokenizer_record(info: TokenizerInfo) -> TokenizerRecord:
    return TokenizerRecord(
        file=TOKENIZER_FILE,
        sha256=info.sha256,
        vocab_size=info.vocab_size,
        dtype=info.dtype,
        prefix_ids=tuple(info.prefix_ids),
        suffix_ids=tuple(info.suffix_ids),
        special_ids=info.special_ids,
        all_special_ids=tuple(info.all_special_ids),
    )
