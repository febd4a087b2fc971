"""Side-by-side throughput benchmark (a script, not a test): the recipe, the floor, the limit,
datatrove and `pipeline run`, on the same corpus, in one run, on this machine.

    .venv/bin/python tests/bench/bench_pipeline.py                # ~100 MB corpus, both tokenizers
    .venv/bin/python tests/bench/bench_pipeline.py --quick        # seconds; CI runs this

Every contestant runs in its own subprocess on the same parquet files (page-cached by a first
read). tokens/s is the same numerator for all (the documents' tokens without specials, as
the floor counts them) over each contestant's wall time, so ratios compare like with like.
* floor: `encode_batch_fast` over the texts already in memory, default Rayon threads, no I/O
* limit: the same on one thread (RAYON_NUM_THREADS=1) times the number of cores
* recipe: load_dataset("parquet") + map(tokenizer, batched, num_proc=2) + group_texts(128,
  batch 1000, num_proc=2) + train_test_split(0.05); its bytes are the map caches
* datatrove: ParquetReader + DocumentTokenizer, LocalPipelineExecutor(tasks=2, workers=2)
* pipeline wN: `pipeline run --workers N` (local Ray, start-up included)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent
CORES = os.cpu_count() or 1


def build_corpus(folder: Path, repeats: int, files: int, max_rows: int | None = None) -> int:
    """dictwiki repeated with unique ids, as HF-like parquet shards; returns text bytes."""
    table = pq.read_table(sorted((SHARED / "corpus" / "dictwiki").glob("*.parquet")))
    if max_rows:
        table = table.slice(0, max_rows)
    parts = []
    for r in range(repeats):
        ids = pa.array([f"{r}-{i}" for i in table.column("id").to_pylist()])
        parts.append(table.set_column(0, "id", ids))
    full = pa.concat_tables(parts)
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-full.num_rows // files)
    for k in range(files):
        pq.write_table(
            full.slice(k * step, step),
            folder / f"train-{k:05d}-of-{files:05d}.parquet",
            row_group_size=1000,
            compression="zstd",
        )
    return sum(len(t.encode()) for t in full.column("text").to_pylist())


def run_child(code: str, env: dict[str, str] | None = None) -> dict:
    """Runs code in a fresh interpreter; it prints one JSON line last. Adds peak RSS of children."""
    script = (
        "import json, resource, sys, time\n" + textwrap.dedent(code) + "\n"
        "r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
        "c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss\n"
        "RESULT['peak_rss_mib'] = max(r, c) / 1024\n"
        "print(json.dumps(RESULT))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor(corpus: Path, tokenizer: str, threads: int | None, every: int = 1) -> dict:
    env = {"RAYON_NUM_THREADS": str(threads)} if threads else {}
    return run_child(
        f"""
        import glob, pyarrow.parquet as pq
        from tokenizers import Tokenizer
        table = pq.read_table(sorted(glob.glob("{corpus}/*.parquet")), columns=["text"])
        texts = table.column("text").to_pylist()[::{every}]
        tok = Tokenizer.from_file("{tokenizer}"); tok.no_padding(); tok.no_truncation()
        t = time.perf_counter(); n = 0
        for i in range(0, len(texts), 1000):
            encs = tok.encode_batch_fast(texts[i:i + 1000], add_special_tokens=False)
            n += sum(len(e) for e in encs)
        RESULT = {{"seconds": time.perf_counter() - t, "tokens": n}}
    """,
        env,
    )


def recipe(corpus: Path, tok_folder: str, work: Path) -> dict:
    return run_child(
        f"""
        import itertools, os
        from pathlib import Path
        import datasets, transformers
        datasets.disable_progress_bars()
        cache = Path("{work}/hf-cache")
        t = time.perf_counter()
        ds = datasets.load_dataset("parquet", data_files="{corpus}/*.parquet", split="train",
                                   cache_dir=str(cache))
        size = lambda: sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        raw = size()
        tok = transformers.AutoTokenizer.from_pretrained("{tok_folder}")
        tokd = ds.map(lambda b: tok(b["text"]), batched=True, num_proc=2,
                      remove_columns=ds.column_names)
        def group(ex):
            cat = {{k: list(itertools.chain.from_iterable(ex[k])) for k in ex}}
            n = len(cat["input_ids"]) // 128 * 128
            return {{k: [v[i:i + 128] for i in range(0, n, 128)] for k, v in cat.items()}}
        lm = tokd.map(group, batched=True, batch_size=1000, num_proc=2)
        split = lm.train_test_split(test_size=0.05, seed=42)
        RESULT = {{"seconds": time.perf_counter() - t, "out_bytes": size() - raw,
                  "block_tokens": len(lm) * 128}}
    """,
        {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"},
    )


def datatrove(corpus: Path, tokenizer_json: str, work: Path) -> dict | None:
    try:
        import datatrove  # noqa: F401
    except ImportError:
        return None
    return run_child(
        f"""
        from pathlib import Path
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.readers import ParquetReader
        from datatrove.pipeline.tokens import DocumentTokenizer
        out = Path("{work}/datatrove")
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=[
            ParquetReader("{corpus}", text_key="text", id_key="id"),
            DocumentTokenizer(str(out), tokenizer_name_or_path="{tokenizer_json}",
                              shuffle_documents=False, save_loss_metadata=False),
        ], tasks=2, workers=2, logging_dir="{work}/datatrove-logs").run()
        RESULT = {{"seconds": time.perf_counter() - t,
                  "out_bytes": sum(p.stat().st_size for p in out.rglob("*") if p.is_file())}}
    """,
        {"TOKENIZERS_PARALLELISM": "false"},
    )


def pipeline(corpus: Path, tokenizer: str, out: Path, workers: int, unit_mb: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    t = time.perf_counter()
    subprocess.run(
        [
            str(BIN / "pipeline"),
            "run",
            "--quiet",
            "--workers",
            str(workers),
            "--input",
            str(corpus),
            "--tokenizer",
            tokenizer,
            "--output",
            str(out),
            "--unit-bytes",
            str(unit_mb * 2**20),
        ],
        check=True,
        capture_output=True,
    )
    seconds = time.perf_counter() - t
    manifest = json.loads((out / "manifest.json").read_text())
    timings = json.loads((out / "timings.json").read_text())
    splits = manifest["splits"].values()
    return {
        "seconds": seconds,
        "out_bytes": sum(s["num_bytes"] for s in splits),
        "block_tokens": sum(s["num_tokens"] for s in splits),
        "document_tokens": sum(s["ledger"]["num_document_tokens"] for s in splits),
        "peak_rss_mib": timings["peak_worker_rss_bytes"] / 2**20,
    }


def bench_tokenizer(name: str, corpus: Path, work: Path, quick: bool) -> list[tuple]:
    folder = SHARED / "tokenizers" / name
    clean = work / f"{name}-tokenizer.json"  # no baked padding/truncation, for datatrove
    from pipeline.tokenization import canonical_json, load_tokenizer

    clean.write_text(canonical_json(load_tokenizer(str(folder))))
    rows: list[tuple] = []
    fl = floor(corpus, str(clean), None)
    tokens = fl["tokens"]
    one = floor(corpus, str(clean), 1, every=1 if quick else 8)
    limit_rate = one["tokens"] / one["seconds"] * CORES
    rows.append(
        (
            "floor (encode_batch_fast)",
            fl["seconds"],
            tokens / fl["seconds"],
            None,
            fl["peak_rss_mib"],
        )
    )
    rows.append((f"limit (1 thread x {CORES})", None, limit_rate, None, None))
    rec = recipe(corpus, str(folder), work)
    rows.append(
        (
            "recipe (datasets, num_proc=2)",
            rec["seconds"],
            tokens / rec["seconds"],
            rec["out_bytes"] / rec["block_tokens"],
            rec["peak_rss_mib"],
        )
    )
    dt = datatrove(corpus, str(clean), work)
    if dt:
        rows.append(
            (
                "datatrove (2 tasks)",
                dt["seconds"],
                tokens / dt["seconds"],
                dt["out_bytes"] / tokens,
                dt["peak_rss_mib"],
            )
        )
    unit_mb = 1 if quick else 8
    for w in (1, 2):
        p = pipeline(corpus, str(folder), work / f"out-w{w}", w, unit_mb)
        assert p["document_tokens"] == tokens, (p["document_tokens"], tokens)
        rows.append(
            (
                f"pipeline run --workers {w}",
                p["seconds"],
                tokens / p["seconds"],
                p["out_bytes"] / p["block_tokens"],
                p["peak_rss_mib"],
            )
        )
    return rows


def print_table(title: str, rows: list[tuple]) -> None:
    floor_rate = rows[0][2]
    limit_rate = rows[1][2]
    print(f"\n{title}")
    heads = ("seconds", "M tok/s", "x floor", "x limit", "B/token")
    print(f"{'':34} " + " ".join(f"{h:>8}" for h in heads) + f" {'peak MiB':>9}")
    for name, sec, rate, bpt, mem in rows:
        f = lambda v, spec: format(v, spec) if v is not None else "-"  # noqa: E731
        print(
            f"{name:34} {f(sec, '8.1f')} {rate / 1e6:8.3f} {rate / floor_rate:8.2f} "
            f"{rate / limit_rate:8.2f} {f(bpt, '8.2f')} {f(mem, '9.0f')}"
        )
    w1 = next(r for r in rows if r[0].endswith("--workers 1"))
    w2 = next(r for r in rows if r[0].endswith("--workers 2"))
    print(f"scaling: per-worker throughput at 2 workers / at 1 worker = {w2[2] / 2 / w1[2]:.2f}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny corpus, one tokenizer (CI)")
    ap.add_argument("--tokenizers", nargs="+", default=["bert-base-uncased", "unigram-128k"])
    ap.add_argument("--repeats", type=int, default=16, help="copies of dictwiki (16 = ~100 MB)")
    ap.add_argument("--scale", type=int, default=4, help="also run the pipeline on N x the corpus")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        corpus = work / "corpus"
        if args.quick:
            mb = build_corpus(corpus, repeats=1, files=2, max_rows=3000) / 1e6
            tokenizers = args.tokenizers[:1]
        else:
            mb = build_corpus(corpus, repeats=args.repeats, files=8) / 1e6
            tokenizers = args.tokenizers
        print(f"corpus: {mb:.1f} MB of text in {corpus} on {CORES} cores")
        for name in tokenizers:
            print_table(f"tokenizer {name}", bench_tokenizer(name, corpus, work, args.quick))
        if not args.quick and args.scale > 1:
            big = work / "corpus-big"
            build_corpus(big, repeats=args.repeats * args.scale, files=8 * args.scale)
            for label, folder in (("1x", corpus), (f"{args.scale}x", big)):
                tok = str(SHARED / "tokenizers" / tokenizers[0])
                p = pipeline(folder, tok, work / "scale", 2, 8)
                rate = p["document_tokens"] / p["seconds"] / 1e6
                print(
                    f"memory flat as input grows: {label} corpus, 2 workers: peak "
                    f"{p['peak_rss_mib']:.0f} MiB per worker, {rate:.3f} M tok/s"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
