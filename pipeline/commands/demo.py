"""`pipeline demo`: the whole job on a corpus every machine has, offline.

Measured on 2 shared cores: steps 1-4 take a few seconds (the run's worker processes start in
milliseconds; a local Ray took ~25 s with its start-up); the training run
~0.9 s per step (tiny BERT, 32 blocks of 128 tokens), so ~1.5 min for the default 100 steps.

Steps, each printed with the command that does the same by hand:
1. a Wikipedia-schema parquet corpus from the standard library's docstrings (sample_corpus);
2. a small WordPiece tokenizer trained on it (skipped when --tokenizer is given);
3. `pipeline run` on it with its default executor (forked worker processes; several 256 KiB
   work units);
4. `pipeline inspect` of the output;
5. a short MLM training run when torch, transformers and pipeline.train are importable.

Layout of --output (default ./demo-output): demo.json (what the demo made, and the marker that
lets a rerun reuse the folder), corpus/*.parquet, tokenizer.json, data/ (the pipeline output),
run/ (the training run). A rerun resumes: the corpus is byte-identical, and the tokenizer is
reused while the corpus is unchanged, because WordPiece training is not reproducible
(huggingface/tokenizers#1794), so retraining would change the run's identity.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import time
from pathlib import Path
from typing import Any

from pipeline.commands.sample_corpus import build_sample_corpus, train_wordpiece
from pipeline.errors import UsageError
from pipeline.format.records import write_json_atomic
from pipeline.run.config import RunConfig

MARKER = "demo.json"
UNIT_BYTES = 256 * 1024  # the 1.3 MB corpus in 3 files -> 6 work units
VOCAB_SIZE = 8000
ENABLE_TRAINING = "pip install torch==2.13.0 && pip install '.[train]'"


def main(args: argparse.Namespace) -> int:
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: expected at least 1, found {args.workers}")
    if args.train_steps < 0:
        raise UsageError(f"--train-steps: expected 0 (skip) or more, found {args.train_steps}")
    out = Path(args.output).expanduser().resolve()
    previous = _claim(out)
    started = time.monotonic()

    t = time.monotonic()
    paths = build_sample_corpus(out / "corpus")
    corpus_sha = _digest(paths)
    num_rows, num_bytes = _corpus_size(paths)
    _say(
        1,
        f"corpus: {num_rows} articles from the standard library's docstrings, "
        f"{num_bytes / 1e6:.1f} MB of text, {len(paths)} parquet files -> {out / 'corpus'}",
        t,
    )

    t = time.monotonic()
    tokenizer, trained = _tokenizer(args.tokenizer, out, paths, corpus_sha, previous)
    _say(2, f"tokenizer: {trained} -> {tokenizer}", t)
    write_json_atomic(
        str(out / MARKER),
        {
            "corpus_sha256": corpus_sha,
            "tokenizer": tokenizer,
            "tokenizer_sha256": _digest([Path(tokenizer)]) if Path(tokenizer).is_file() else None,
        },
    )

    data = out / "data"
    _run_pipeline(paths, tokenizer, data, args.workers)
    print(f"demo: 4/5 pipeline inspect {data} --decode 1 --top 10", flush=True)
    code = _inspect(data) or _train(data, out / "run", args.train_steps)
    print(f"demo: finished in {time.monotonic() - started:.0f}s; output in {out}", flush=True)
    return code


def _claim(out: Path) -> dict[str, Any]:
    """The previous demo's record, or {}; refuses a non-empty folder the demo did not make."""
    marker = out / MARKER
    if marker.is_file():
        try:
            return json.loads(marker.read_text())
        except json.JSONDecodeError:
            return {}  # a demo folder all the same: rebuild everything in it
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UsageError(
            f"--output {out}: expected a new folder or a previous demo output (with {MARKER}), "
            "found other files; choose another --output, the demo writes several folders there"
        )
    out.mkdir(parents=True, exist_ok=True)
    return {}


def _tokenizer(
    given: str | None, out: Path, paths: list[Path], corpus_sha: str, previous: dict[str, Any]
) -> tuple[str, str]:
    """(tokenizer path, what was done) for --tokenizer, the reused one, or a newly trained one."""
    if given:
        return str(Path(given).expanduser().resolve()), "the one given with --tokenizer"
    path = out / "tokenizer.json"
    if (
        path.is_file()
        and previous.get("corpus_sha256") == corpus_sha
        and previous.get("tokenizer_sha256") == _digest([path])
    ):
        return str(path), "reused, trained on this same corpus by an earlier demo run"
    train_wordpiece(paths, path, VOCAB_SIZE)
    return str(path), f"trained an uncased WordPiece of {VOCAB_SIZE:,} tokens on the corpus"


def _run_pipeline(paths: list[Path], tokenizer: str, data: Path, workers: int | None) -> None:
    from pipeline.run.runner import run_pipeline
    from pipeline.run.worker_pool import ProcessExecutor

    config = RunConfig(
        inputs=tuple(str(p) for p in paths),
        tokenizer=tokenizer,
        output=str(data),
        unit_bytes=UNIT_BYTES,
    )
    print(
        f"demo: 3/5 pipeline run --input {paths[0].parent} --tokenizer {tokenizer} "
        f"--output {data} --unit-bytes {UNIT_BYTES} "
        f"({workers or os.cpu_count()} worker processes)",
        flush=True,
    )
    t = time.monotonic()
    # overwrite: data/ belongs to the demo; a new --tokenizer makes it a different run.
    result = run_pipeline(config, ProcessExecutor(workers=workers), overwrite=True)
    splits = result.manifest.splits
    print(
        f"demo: 3/5 done: {result.num_units} units ({result.num_units_run} run now), "
        + ", ".join(f"{s} {v.num_blocks:,} blocks" for s, v in splits.items())
        + f", {result.num_tokens:,} document tokens this run [{time.monotonic() - t:.1f}s]",
        flush=True,
    )


def _inspect(data: Path) -> int:
    from pipeline.commands.inspection import main as inspect_main  # polars: imported when used

    return inspect_main(
        argparse.Namespace(output=str(data), json=False, decode=1, shards=False, top=10)
    )


def _train(data: Path, run: Path, steps: int) -> int:
    if steps == 0:
        print("demo: 5/5 training skipped (--train-steps 0)")
        return 0
    missing = [m for m in ("torch", "transformers") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"demo: 5/5 training skipped: {', '.join(missing)} missing; `{ENABLE_TRAINING}`")
        return 0
    from pipeline.train.loop import main as train_main  # torch: imported only when it trains

    argv = train_argv(data, run, steps)
    print(f"demo: 5/5 pipeline train {' '.join(argv)}", flush=True)
    code = train_main(argv)
    evals = [r for r in _metrics(run / "metrics.jsonl") if "eval_ppl" in r]
    if code == 0 and evals:
        last = evals[-1]
        print(
            f"demo: 5/5 validation perplexity {last['eval_ppl']:.1f} after {last['step']} steps "
            f"(eval loss {last['eval_loss']:.3f}); metrics in {run / 'metrics.jsonl'}",
            flush=True,
        )
    return code


def train_argv(data: Path, run: Path, steps: int) -> list[str]:
    """`pipeline train` flags of the closing run: tiny BERT, one evaluation at the end."""
    argv = ["--data", str(data), "--model", "tiny-bert", "--output", str(run)]
    argv += ["--max-steps", str(steps), "--batch-size", "32", "--lr", "1e-3"]
    return [*argv, "--eval-steps", str(steps)]


def _metrics(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _say(step: int, text: str, started: float) -> None:
    print(f"demo: {step}/5 {text} [{time.monotonic() - started:.1f}s]", flush=True)


def _digest(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for path in paths:
        h.update(path.read_bytes())
    return h.hexdigest()


def _corpus_size(paths: list[Path]) -> tuple[int, int]:
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    rows = text_bytes = 0
    for path in paths:
        text = pq.read_table(path, columns=["text"]).column("text")
        rows += len(text)
        text_bytes += pc.sum(pc.binary_length(text)).as_py() or 0
    return rows, text_bytes
