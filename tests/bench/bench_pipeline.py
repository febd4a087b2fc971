"""Side-by-side throughput benchmark (a script, not a test): the recipe, the floor, the limit,
datatrove and `pipeline run`, on the same corpus, in one run, on this machine.

    .venv/bin/python tests/bench/bench_pipeline.py                # ~100 MB corpus, both tokenizers
    .venv/bin/python tests/bench/bench_pipeline.py --quick        # seconds; CI runs this

Every contestant runs in its own subprocess on the same parquet files (page-cached by a first
read). tokens/s has the same numerator for all (the documents' tokens without specials, as the
floor counts them) over each contestant's wall time, so the ratios compare like with like.
* floor: `encode_batch_fast` over the texts already in memory, default Rayon threads, no I/O
* limit: the same on one thread (RAYON_NUM_THREADS=1) times the number of cores, as defined
* limit, measured: one single-thread process per core, all at once, texts in memory: what the
  cores really give together (they share caches, memory bandwidth and turbo headroom)
* recipe: load_dataset("parquet") + map(tokenizer, batched, num_proc=2) + group_texts(128,
  batch 1000, num_proc=2) + train_test_split(0.05); its bytes are the map caches
* datatrove: ParquetReader + DocumentTokenizer, LocalPipelineExecutor(tasks=2, workers=2)
* pipeline wN: `pipeline run --workers N` (local Ray, start-up included)
B/token is bytes on disk per token stored (blocks for the pipeline and the recipe, datatrove's
token files for datatrove). Peak MiB is per worker process.
"""

from __future__ import annotations

import argparse
import importlib.util
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
sys.path.insert(0, str(REPO))

from pipeline.format.manifest import load_manifest  # noqa: E402

READ_TEXTS = """
import glob, pyarrow.parquet as pq
from tokenizers import Tokenizer
table = pq.read_table(sorted(glob.glob("{corpus}/*.parquet")), columns=["text"])
texts = table.column("text").to_pylist()[::{every}]
tok = Tokenizer.from_file("{tokenizer}"); tok.no_padding(); tok.no_truncation()
def encode(part):
    n = 0
    for i in range(0, len(part), 1000):
        n += sum(len(e) for e in tok.encode_batch_fast(part[i:i + 1000], add_special_tokens=False))
    return n
"""


def build_corpus(folder: Path, repeats: int, files: int, max_rows: int | None = None) -> int:
    """dictwiki repeated with unique ids, as HF-like parquet shards; returns text bytes."""
    table = pq.read_table(sorted((SHARED / "corpus" / "dictwiki").glob("*.parquet")))
    table = table.slice(0, max_rows) if max_rows else table
    parts = []
    for r in range(repeats):
        ids = pa.array([f"{r}-{i}" for i in table.column("id").to_pylist()])
        parts.append(table.set_column(0, "id", ids))
    full = pa.concat_tables(parts)
    folder.mkdir(parents=True, exist_ok=True)
    step = -(-full.num_rows // files)
    for k in range(files):
        name = folder / f"train-{k:05d}-of-{files:05d}.parquet"
        pq.write_table(full.slice(k * step, step), name, row_group_size=1000, compression="zstd")
    return sum(len(t.encode()) for t in full.column("text").to_pylist())


def run_child(code: str, env: dict[str, str] | None = None) -> dict:
    """Runs code in a fresh interpreter that sets RESULT; adds the peak RSS of one process."""
    script = (
        "import json, resource, sys, time\n" + textwrap.dedent(code) + "\n"
        "from pipeline.run.summary import peak_rss_bytes\n"
        "c = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024\n"
        "RESULT['peak_rss_mib'] = max(peak_rss_bytes(), c) / 2**20\n"
        "print(json.dumps(RESULT))\n"
    )
    env = {**os.environ, **(env or {})}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor(corpus: Path, tokenizer: str, threads: int | None, every: int = 1) -> dict:
    env = {"RAYON_NUM_THREADS": str(threads)} if threads else {}
    code = READ_TEXTS.format(corpus=corpus, tokenizer=tokenizer, every=every) + (
        "t = time.perf_counter(); n = encode(texts)\n"
        "RESULT = {'seconds': time.perf_counter() - t, 'tokens': n}\n"
    )
    return run_child(code, env)


def measured_limit(corpus: Path, tokenizer: str, every: int) -> dict:
    code = READ_TEXTS.format(corpus=corpus, tokenizer=tokenizer, every=every) + textwrap.dedent(
        f"""
        import multiprocessing as mp
        def encode_part(k):  # the forked workers hold the texts: only k is sent
            return encode(texts[k::{CORES}])
        with mp.get_context("fork").Pool({CORES}) as pool:
            t = time.perf_counter(); n = sum(pool.map(encode_part, range({CORES})))
        RESULT = {{"seconds": time.perf_counter() - t, "tokens": n}}
        """
    )
    return run_child(code, {"RAYON_NUM_THREADS": "1"})


def recipe(corpus: Path, tok_folder: str, work: Path) -> dict:
    code = f"""
        import itertools
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
                  "stored_tokens": len(lm) * 128}}
    """
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run_child(code, env)


def run_datatrove(corpus: Path, tokenizer_json: str, work: Path, token_size: int) -> dict:
    code = f"""
        from pathlib import Path
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.readers import ParquetReader
        from datatrove.pipeline.tokens import DocumentTokenizer
        out = Path("{work}/datatrove-{token_size}-{Path(tokenizer_json).stem}")
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=[
            ParquetReader("{corpus}", text_key="text", id_key="id"),
            DocumentTokenizer(str(out), tokenizer_name_or_path="{tokenizer_json}",
                              shuffle_documents=False, save_loss_metadata=False),
        ], tasks=2, workers=2, logging_dir=str(out) + "-logs").run()  # per run: it skips done tasks
        files = [p for p in out.rglob("*") if p.is_file()]
        RESULT = {{"seconds": time.perf_counter() - t,
                  "out_bytes": sum(p.stat().st_size for p in files),
                  "stored_tokens": sum(p.stat().st_size for p in files
                                       if p.suffix == ".ds") // {token_size}}}
    """
    return run_child(code, {"TOKENIZERS_PARALLELISM": "false"})


def pipeline(corpus: Path, tokenizer: str, out: Path, workers: int, unit_mb: int, *extra: str):
    shutil.rmtree(out, ignore_errors=True)
    cmd = [str(BIN / "pipeline"), "run", "--quiet", "--workers", str(workers), "--input",
           str(corpus), "--tokenizer", tokenizer, "--output", str(out),
           "--unit-bytes", str(unit_mb * 2**20), *extra]  # fmt: skip
    t = time.perf_counter()
    subprocess.run(cmd, check=True, capture_output=True)
    seconds = time.perf_counter() - t
    splits = load_manifest(str(out)).splits.values()
    timings = json.loads((out / "timings.json").read_text())
    return {
        "seconds": seconds,
        "out_bytes": sum(s.num_bytes for s in splits),
        "stored_tokens": sum(s.num_tokens for s in splits),
        "document_tokens": sum(s.ledger.num_document_tokens for s in splits),
        "peak_rss_mib": timings["peak_worker_rss_bytes"] / 2**20,
    }


def bench_tokenizer(name: str, corpus: Path, work: Path, quick: bool) -> list[tuple]:
    from pipeline.ingest.tokenization import canonical_json, describe_tokenizer, load_tokenizer

    folder = SHARED / "tokenizers" / name
    tok = load_tokenizer(str(folder))
    clean = work / f"{name}-tokenizer.json"  # no baked padding/truncation, for datatrove
    clean.write_text(canonical_json(tok))
    token_size = 2 if describe_tokenizer(tok).dtype == "uint16" else 4
    every = 1 if quick else 4  # the limits are rates: a quarter of the texts measures them
    fl = floor(corpus, str(clean), None)
    tokens = fl["tokens"]
    one = floor(corpus, str(clean), 1, every)
    both = measured_limit(corpus, str(clean), every)
    rows: list[tuple] = [
        ("floor (encode_batch_fast)", fl["seconds"], tokens / fl["seconds"], None,
         fl["peak_rss_mib"]),
        (f"limit (1 thread x {CORES})", None, one["tokens"] / one["seconds"] * CORES, None, None),
        (f"limit, measured ({CORES} processes)", None, both["tokens"] / both["seconds"], None,
         None),
    ]  # fmt: skip
    rec = recipe(corpus, str(folder), work)
    rows.append(("recipe (datasets, num_proc=2)", rec["seconds"], tokens / rec["seconds"],
                 rec["out_bytes"] / rec["stored_tokens"], rec["peak_rss_mib"]))  # fmt: skip
    if importlib.util.find_spec("datatrove"):
        dt = run_datatrove(corpus, str(clean), work, token_size)
        rows.append(("datatrove (2 tasks)", dt["seconds"], tokens / dt["seconds"],
                     dt["out_bytes"] / dt["stored_tokens"], dt["peak_rss_mib"]))  # fmt: skip
    else:
        print("datatrove: not installed (pip install datatrove==0.10.1), row left out")
    unit_mb = 1 if quick else 8
    runs = [(1, ()), (2, ())] + ([] if quick else [(2, ("--compression-level", "9"))])
    for workers, extra in runs:
        p = pipeline(corpus, str(folder), work / f"out-w{workers}", workers, unit_mb, *extra)
        if p["document_tokens"] != tokens:
            raise SystemExit(f"pipeline saw {p['document_tokens']} tokens, the floor {tokens}")
        label = f"pipeline run --workers {workers}" + (" (zstd 9)" if extra else "")
        rows.append((label, p["seconds"], tokens / p["seconds"],
                     p["out_bytes"] / p["stored_tokens"], p["peak_rss_mib"]))  # fmt: skip
    return rows


def print_table(title: str, rows: list[tuple]) -> None:
    floor_rate, limit_rate = rows[0][2], rows[1][2]
    print(f"\n{title}")
    heads = ("seconds", "M tok/s", "x floor", "x limit", "B/token")
    print(f"{'':36} " + " ".join(f"{h:>8}" for h in heads) + f" {'peak MiB':>9}")
    for name, sec, rate, bpt, mem in rows:
        dash = f"{'-':>8}"
        cells = [f"{sec:8.1f}" if sec else dash, f"{rate / 1e6:8.3f}",
                 f"{rate / floor_rate:8.2f}", f"{rate / limit_rate:8.2f}",
                 f"{bpt:8.2f}" if bpt else dash, f"{mem:9.0f}" if mem else " " + dash]  # fmt: skip
        print(f"{name:36} " + " ".join(cells))
    rate = {r[0]: r[2] for r in rows}
    w1, w2 = rate["pipeline run --workers 1"], rate["pipeline run --workers 2"]
    measured = rate[f"limit, measured ({CORES} processes)"]
    print(f"scaling: per-worker throughput at 2 workers / at 1 worker = {w2 / 2 / w1:.2f}; "
          f"pipeline --workers 2 / measured limit = {w2 / measured:.2f}")  # fmt: skip


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
        quick = args.quick
        mb = build_corpus(corpus, 1 if quick else args.repeats, 2 if quick else 8,
                          3000 if quick else None) / 1e6  # fmt: skip
        tokenizers = args.tokenizers[:1] if quick else args.tokenizers
        print(f"corpus: {mb:.1f} MB of text in {corpus} on {CORES} cores")
        for name in tokenizers:
            print_table(f"tokenizer {name}", bench_tokenizer(name, corpus, work, quick))
        if not quick and args.scale > 1:
            big = work / "corpus-big"
            build_corpus(big, repeats=args.repeats * args.scale, files=8 * args.scale)
            for name in tokenizers:
                tok = str(SHARED / "tokenizers" / name)
                for label, folder in (("1x", corpus), (f"{args.scale}x", big)):
                    p = pipeline(folder, tok, work / "scale", 2, 8)
                    rate = p["document_tokens"] / p["seconds"] / 1e6
                    print(f"{name}, {label} corpus, 2 workers: peak {p['peak_rss_mib']:.0f} MiB "
                          f"per worker, {rate:.3f} M tok/s, {p['seconds']:.0f} s")  # fmt: skip
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
