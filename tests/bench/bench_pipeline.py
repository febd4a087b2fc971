"""Side-by-side preprocessing benchmark (a script, not a test): `pipeline run` against its
peers and against the tokenizer's own limit, on the same corpus, interleaved, in one run.

    .venv/bin/python tests/bench/bench_pipeline.py            # dictwiki x1 and x8, both tokenizers
    .venv/bin/python tests/bench/bench_pipeline.py --scaling  # + 1 worker, 1 limit process (x8)
    .venv/bin/python tests/bench/bench_pipeline.py --repeats 32 --skip-fixed  # steady state
    .venv/bin/python tests/bench/bench_pipeline.py --quick    # seconds; CI runs this (no asserts
                                                              # on time: shared machines are noisy)

Every contender runs in its own subprocess on the same parquet files (page-cached by a first
read), with the same tokenizer settings (no truncation, no padding, no specials counted) and the
same worker count (2). Contenders are run in rounds, each round in a rotated order, so that a
slow minute of the machine hits all of them alike; figures are medians over rounds.

Load: a shared machine is measured too. For each run the script reads the machine's busy CPU
time from /proc/stat and subtracts the contender's own (its process tree's rusage): the rest is
other load, in cores. A run with more than `--max-other` cores of other load is *disturbed*:
the median uses only undisturbed runs when there are any, and every table says which figures
were taken under load and how much.

* floor: `encode_batch_fast` over the texts already in memory, default Rayon threads, no I/O
* limit: one single-thread tokenizer process per core, all at once, texts in memory (what the
  cores give together: they share caches, memory bandwidth and turbo headroom)
* pipeline: `pipeline run --workers 2` (default executor: forked worker processes)
* pipeline ray: `pipeline run --workers 2 --backend ray` (an embedded local Ray)
* litdata 0.2.76 (installed by hand: LITDATA_INSTALL below): `optimize(fn,
  inputs=[(file, row_group)...], item_loader=TokensLoader(), num_workers=2)`, tokenizer
  loaded once per worker, one Rayon thread per worker, uint16 ids
  (uint32 for a vocabulary above 65,535), no compression: its LLM-pretraining recipe
* datatrove 0.10.1 (`--peers`): ParquetReader + DocumentTokenizer, 2 tasks, 2 workers
* recipe (`--peers`): datasets map + group_texts, num_proc=2
The limit and litdata get the pipeline's word cache (WORD_CACHE_WORDS; Unigram and BPE), so
those ratios measure the pipeline, not the cache (the --peers rows keep their libraries'
defaults). `pipeline run` runs on mimalloc (pipeline/run/allocator.py); the limit and litdata
keep glibc's allocator, as their users run them, and "limit on mimalloc" (x8, x32) shows the
limit with the pipeline's allocator; "limit, 10,000-word cache" (x1, which repeats no
article) is the tokenizer as loaded, to show what the cache buys. Ratios to the limit and to
litdata are taken round by round (each run against the other's run of the same round),
because this machine's speed drifts by 20-30 % between minutes with no visible other load.
tokens/s has one numerator for all: the documents' tokens (no specials) as the floor counts
them, over each contender's wall time; every contender's own stored count is checked equal.
Fixed cost: the wall time of a run over one tiny row group (start-up + shutdown, no real work).
Bytes: on-disk bytes per stored token against the order-0 entropy of the stored id stream.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
CORES = os.cpu_count() or 1
sys.path.insert(0, str(REPO))

from pipeline.format.manifest import load_manifest  # noqa: E402
from pipeline.ingest.tokenization import WORD_CACHE_WORDS as WORD_CACHE  # noqa: E402
from pipeline.run.allocator import ALLOCATOR_ENV, mimalloc_library  # noqa: E402
from pipeline.run.encoders import WORD_CACHE_ENV  # noqa: E402

MIMALLOC = mimalloc_library()

WORKERS = 2
# litdata 0.2.76 declares torchvision, and PyPI's torchvision either pulls a CUDA torch or, pinned
# to 0.28.0, breaks transformers' model imports beside torch 2.13.0 (operator torchvision::nms does
# not exist); litdata's optimize and TokensLoader import without it. Hence --no-deps.
LITDATA_INSTALL = (
    "pip install --no-deps litdata==0.2.76 && pip install lightning-utilities obstore tifffile"
)
READ_TEXTS = """
import glob, pyarrow.parquet as pq
from tokenizers import Tokenizer
table = pq.read_table(sorted(glob.glob("{corpus}/*.parquet")), columns=["text"])
texts = table.column("text").to_pylist()
tok = Tokenizer.from_file("{tokenizer}"); tok.no_padding(); tok.no_truncation()
if {cache} is not None and hasattr(tok.model, "_resize_cache"):
    tok.model._resize_cache({cache})
def encode(part):
    n = 0
    for i in range(0, len(part), 1000):
        n += sum(len(e) for e in tok.encode_batch_fast(part[i:i + 1000], add_special_tokens=False))
    return n
"""
LITDATA = """
import glob, shutil
import numpy as np, pyarrow.parquet as pq
from litdata import optimize
from litdata.streaming.item_loader import TokensLoader
_TOK = None
def tokenize(item):
    global _TOK
    if _TOK is None:  # once per worker
        from tokenizers import Tokenizer
        _TOK = Tokenizer.from_file("{tokenizer}"); _TOK.no_padding(); _TOK.no_truncation()
        if hasattr(_TOK.model, "_resize_cache"):  # the pipeline's word cache, for fairness
            _TOK.model._resize_cache({cache})
    path, rg = item
    texts = pq.ParquetFile(path).read_row_group(rg, columns=["text"]).column("text").to_pylist()
    for e in _TOK.encode_batch_fast(texts, add_special_tokens=False):
        yield np.asarray(e.ids, dtype="{dtype}")
if __name__ == "__main__":
    files = sorted(glob.glob("{corpus}/*.parquet"))
    inputs = [(f, rg) for f in files for rg in range(pq.ParquetFile(f).num_row_groups)]
    optimize(fn=tokenize, inputs=inputs, output_dir="{out}", chunk_size=129 * 2048,
             item_loader=TokensLoader(), num_workers={workers}, verbose=False)
    index = json.load(open("{out}/index.json"))
    RESULT = {{"out_bytes": sum(c["chunk_bytes"] for c in index["chunks"]),
              "stored_tokens": sum(c["dim"] for c in index["chunks"])}}
"""

# --------------------------------------------------------------------------- measuring


def busy_seconds() -> float:
    """CPU-seconds the whole machine has been busy (all cores), from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    user, nice, system, _idle, _iowait, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measured(run: Callable[[], dict]) -> dict:
    """run() plus its wall time, its process tree's CPU time and the other load meanwhile."""
    busy, cpu, t = busy_seconds(), children_cpu(), time.perf_counter()
    result = run()
    wall = time.perf_counter() - t
    own = children_cpu() - cpu
    other = max(0.0, busy_seconds() - busy - own) / wall
    return {**result, "wall": wall, "cpu": own, "other_cores": other}


def run_child(code: str, env: dict[str, str] | None = None, main: bool = False) -> dict:
    """Runs code in a fresh interpreter that sets RESULT (as a script when `main`, for
    libraries that spawn workers and re-import __main__)."""
    body = "import json, sys, time\n" + textwrap.dedent(code)
    if main:
        body += "\n    print(json.dumps(RESULT))\n"
    else:
        body += "\nprint(json.dumps(RESULT))\n"
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(body)
    try:
        out = subprocess.run([sys.executable, f.name], capture_output=True, text=True,
                             env={**os.environ, **(env or {})})  # fmt: skip
    finally:
        os.unlink(f.name)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- contenders


def floor(corpus: Path, tokenizer: str) -> dict:
    code = READ_TEXTS.format(corpus=corpus, tokenizer=tokenizer, cache=WORD_CACHE) + (
        "t = time.perf_counter(); n = encode(texts)\n"
        "RESULT = {'seconds': time.perf_counter() - t, 'tokens': n}\n"
    )
    return run_child(code)


def limit(
    corpus: Path,
    tokenizer: str,
    cache: int | None = WORD_CACHE,
    procs: int = CORES,
    preload: str | None = None,
) -> dict:
    """One single-thread tokenizer per core, all at once, over texts already in memory; with
    the pipeline's word cache, or (cache None) the tokenizer's own (10,000 words)."""
    code = READ_TEXTS.format(corpus=corpus, tokenizer=tokenizer, cache=cache) + textwrap.dedent(
        f"""
        import multiprocessing as mp
        def encode_part(k):  # the forked workers hold the texts: only k is sent
            return encode(texts[k::{procs}])
        with mp.get_context("fork").Pool({procs}) as pool:
            t = time.perf_counter(); n = sum(pool.map(encode_part, range({procs})))
        RESULT = {{"seconds": time.perf_counter() - t, "tokens": n}}
        """
    )
    return run_child(
        code, {"RAYON_NUM_THREADS": "1", **({"LD_PRELOAD": preload} if preload else {})}
    )


def litdata(corpus: Path, tokenizer: str, out: Path, dtype: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    code = LITDATA.format(corpus=corpus, tokenizer=tokenizer, out=out, dtype=dtype,
                          workers=WORKERS, cache=WORD_CACHE)  # fmt: skip
    return run_child(code, {"RAYON_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}, True)


def pipeline(corpus: Path, tokenizer: str, out: Path, workers: int, *extra: str) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline.commands.cli", "run", "--quiet", "--workers",
           str(workers), "--input", str(corpus), "--tokenizer", tokenizer, "--output", str(out),
           *extra]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop(WORD_CACHE_ENV, None)  # the default cache, as the other contenders get
    env.pop(ALLOCATOR_ENV, None)  # and the default allocator (mimalloc, where installed)
    subprocess.run(cmd, check=True, capture_output=True, env=env, cwd=REPO)
    splits = load_manifest(str(out)).splits.values()
    return {
        "out_bytes": sum(s.num_bytes for s in splits),
        "stored_tokens": sum(s.num_tokens for s in splits),
        "document_tokens": sum(s.ledger.num_document_tokens for s in splits),
    }


def datatrove(corpus: Path, tokenizer: str, out: Path, token_size: int) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    code = f"""
        from pathlib import Path
        from datatrove.executor import LocalPipelineExecutor
        from datatrove.pipeline.readers import ParquetReader
        from datatrove.pipeline.tokens import DocumentTokenizer
        out = Path("{out}")
        LocalPipelineExecutor(pipeline=[
            ParquetReader("{corpus}", text_key="text", id_key="id"),
            DocumentTokenizer(str(out), tokenizer_name_or_path="{tokenizer}",
                              shuffle_documents=False, save_loss_metadata=False),
        ], tasks={WORKERS}, workers={WORKERS}, logging_dir=str(out) + "-logs").run()
        files = [p for p in out.rglob("*") if p.is_file()]
        RESULT = {{"out_bytes": sum(p.stat().st_size for p in files),
                  "stored_tokens": sum(p.stat().st_size for p in files
                                       if p.suffix == ".ds") // {token_size}}}
    """
    return run_child(code, {"TOKENIZERS_PARALLELISM": "false"})


def recipe(corpus: Path, tok_folder: str, work: Path) -> dict:
    shutil.rmtree(work / "hf-cache", ignore_errors=True)
    code = f"""
        import itertools
        from pathlib import Path
        import datasets, transformers
        datasets.disable_progress_bars()
        cache = Path("{work}/hf-cache")
        ds = datasets.load_dataset("parquet", data_files="{corpus}/*.parquet", split="train",
                                   cache_dir=str(cache))
        size = lambda: sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
        raw = size()
        tok = transformers.AutoTokenizer.from_pretrained("{tok_folder}")
        tokd = ds.map(lambda b: tok(b["text"]), batched=True, num_proc={WORKERS},
                      remove_columns=ds.column_names)
        def group(ex):
            cat = {{k: list(itertools.chain.from_iterable(ex[k])) for k in ex}}
            n = len(cat["input_ids"]) // 128 * 128
            return {{k: [v[i:i + 128] for i in range(0, n, 128)] for k, v in cat.items()}}
        lm = tokd.map(group, batched=True, batch_size=1000, num_proc={WORKERS})
        lm.train_test_split(test_size=0.05, seed=42)
        RESULT = {{"out_bytes": size() - raw, "stored_tokens": len(lm) * 128}}
    """
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return run_child(code, env)


# --------------------------------------------------------------------------- corpus, rounds


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
    for name in folder.glob("*.parquet"):  # page-cache the files before anyone is timed
        name.read_bytes()
    return sum(len(t.encode()) for t in full.column("text").to_pylist())


def interleaved(contenders: dict[str, Callable[[], dict]], rounds: int, max_other: float,
                extra: int) -> dict[str, list[dict]]:  # fmt: skip
    """Rounds in rotated order; up to `extra` more rounds while any contender has fewer
    undisturbed runs than `rounds` // 2 + 1."""
    names = list(contenders)
    runs: dict[str, list[dict]] = {n: [] for n in names}
    for r in range(rounds + extra):
        calm = {n: sum(x["other_cores"] <= max_other for x in runs[n]) for n in names}
        if r >= rounds and min(calm.values()) >= rounds // 2 + 1:
            break
        for name in names[r % len(names) :] + names[: r % len(names)]:
            runs[name].append(measured(contenders[name]))
            x = runs[name][-1]
            print(f"  round {r + 1} {name:28} {x['wall']:7.2f} s wall {x['cpu']:7.2f} s cpu "
                  f"other load {x['other_cores']:.2f} cores", flush=True)  # fmt: skip
    return runs


LIMIT = "limit (1 thread x 2 cores)"


def paired(num: list[dict], den: list[dict], key_n: str, key_d: str, max_other: float,
           scale: float = 1.0) -> str:  # fmt: skip
    """Median and range of num[r][key_n] / den[r][key_d] over rounds r where neither run was
    disturbed: a drift of the machine's speed between rounds then cancels."""
    ratios = sorted(scale * a.get(key_n, a["wall"]) / b.get(key_d, b["wall"])
                    for a, b in zip(num, den, strict=False)
                    if a["other_cores"] <= max_other and b["other_cores"] <= max_other)  # fmt: skip
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.2f} ({ratios[0]:.2f}-{ratios[-1]:.2f})"


def summary(runs: list[dict], max_other: float) -> dict:
    calm = [x for x in runs if x["other_cores"] <= max_other]
    use = calm or runs
    return {
        "wall": statistics.median(x["wall"] for x in use),
        "cpu": statistics.median(x["cpu"] for x in use),
        "seconds": statistics.median(x.get("seconds", x["wall"]) for x in use),
        "other_cores": statistics.median(x["other_cores"] for x in use),
        "runs": len(use),
        "disturbed": not calm,
        "last": runs[-1],
    }


# --------------------------------------------------------------------------- bytes


def entropy_report(out: Path) -> dict:
    """Bytes per stored token on disk against the order-0 entropy of the stored id stream."""
    sys.path.insert(0, str(REPO))
    from pipeline.format.shards import ShardReader

    counts: np.ndarray | None = None
    for shard in sorted(out.glob("*/shard-*.arrow")):
        tokens = ShardReader(str(shard)).read_all().tokens.ravel()
        c = np.bincount(tokens)
        counts = c if counts is None else _add(counts, c)
    assert counts is not None
    p = counts[counts > 0] / counts.sum()
    bits = float(-(p * np.log2(p)).sum())
    disk = sum(f.stat().st_size for f in out.glob("*/shard-*.arrow"))
    tok_json = (out / "tokenizer.json").read_bytes()
    import zstandard

    return {
        "entropy_bytes": bits / 8,
        "disk_bytes": disk / int(counts.sum()),
        "tokenizer_json": len(tok_json),
        "tokenizer_json_zstd3": len(zstandard.ZstdCompressor(level=3).compress(tok_json)),
        "shards_bytes": disk,
    }


def _add(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    n = max(a.size, b.size)
    return np.pad(a, (0, n - a.size)) + np.pad(b, (0, n - b.size))


# --------------------------------------------------------------------------- the tables


def bench(name: str, corpora: dict[str, Path], work: Path, args: argparse.Namespace) -> None:
    sys.path.insert(0, str(REPO))
    from pipeline.ingest.tokenization import canonical_json, describe_tokenizer, load_tokenizer

    folder = SHARED / "tokenizers" / name
    tok = load_tokenizer(str(folder))
    clean = work / f"{name}-tokenizer.json"  # no baked padding/truncation, for the peers
    clean.write_text(canonical_json(tok))
    dtype = describe_tokenizer(tok).dtype
    have_litdata = importlib.util.find_spec("litdata") is not None and not args.quick
    if not have_litdata and not args.quick:
        print(f"litdata: not installed ({LITDATA_INSTALL}), row left out")
    for label, corpus in corpora.items():
        print(f"\n== {name}, {label}", flush=True)
        tokens = floor(corpus, str(clean))["tokens"]
        contenders: dict[str, Callable[[], dict]] = {
            LIMIT: lambda c=corpus: limit(c, str(clean)),
            "pipeline": lambda c=corpus: pipeline(c, str(folder), work / "p", WORKERS),
        }
        if have_litdata:
            contenders["litdata"] = lambda c=corpus: litdata(c, str(clean), work / "l", dtype)
        if MIMALLOC and label != "x1":  # the pipeline's allocator, given to the limit too
            contenders["limit on mimalloc"] = lambda c=corpus: limit(c, str(clean),
                                                                     preload=MIMALLOC)  # fmt: skip
        if label == "x1" and not args.quick:  # what the word cache buys, on no repeats
            contenders["limit, 10,000-word cache"] = lambda c=corpus: limit(c, str(clean), None)
        if args.ray and label == "x1":
            contenders["pipeline ray"] = lambda c=corpus: pipeline(
                c, str(folder), work / "r", WORKERS, "--backend", "ray"
            )
        if args.scaling and label != "x1":
            # the limit's own scaling: what two processes on two cores give against one
            contenders["limit, 1 process"] = lambda c=corpus: limit(c, str(clean), procs=1)
            contenders["pipeline 1 worker"] = lambda c=corpus: pipeline(c, str(folder),
                                                                        work / "p1", 1)  # fmt: skip
        if args.peers and label == "x1":
            size = 2 if dtype == "uint16" else 4
            contenders["datatrove"] = lambda c=corpus, s=size: datatrove(
                c, str(clean), work / "d", s
            )
            contenders["recipe"] = lambda c=corpus: recipe(c, str(folder), work)
        runs = interleaved(contenders, args.rounds, args.max_other, args.extra_rounds)
        rows = {n: summary(r, args.max_other) for n, r in runs.items()}
        for n, row in rows.items():
            stored = row["last"].get("document_tokens", row["last"].get("stored_tokens"))
            if "limit" not in n and n not in ("datatrove", "recipe") and stored != tokens:
                raise SystemExit(f"{n} stored {stored} document tokens, the floor {tokens}")
        print(f"\n{name}, {label}: {tokens:,} document tokens (equal for every contender)")
        print("x limit, x litdata: medians (and ranges) of the ratios taken round by round, each "
              "against the other's run of the same round")  # fmt: skip
        print(f"{'':30} {'wall s':>7} {'cpu s':>7} {'cores':>6} {'M tok/s':>8} {'x limit':>17} "
              f"{'x litdata':>17} {'B/token':>8} {'runs':>5} {'other load':>11}")  # fmt: skip
        for n, row in rows.items():
            rate = tokens / row["seconds"]
            # throughput against the limit's; wall time against litdata's
            vs_limit = paired(runs[LIMIT], runs[n], "seconds", "seconds", args.max_other)
            vs_lit = paired(runs[n], runs.get("litdata", []), "wall", "wall", args.max_other)
            last = row["last"]
            bpt = last["out_bytes"] / last["stored_tokens"] if "out_bytes" in last else None
            flag = " (load)" if row["disturbed"] else ""
            print(f"{n:30} {row['wall']:7.2f} {row['cpu']:7.2f} {row['cpu'] / row['wall']:6.2f} "
                  f"{rate / 1e6:8.3f} {vs_limit:>17} {vs_lit if 'limit' not in n else '-':>17} "
                  f"{bpt if bpt is None else round(bpt, 3)!s:>8} {row['runs']:5d} "
                  f"{row['other_cores']:7.2f} c{flag}")  # fmt: skip
        if "pipeline 1 worker" in rows:
            per_round = paired(runs["pipeline 1 worker"], runs["pipeline"], "wall", "wall",
                               args.max_other, scale=0.5)  # fmt: skip
            print(f"scaling: per-worker throughput at 2 workers / at 1 worker = {per_round}")
            own = paired(runs["limit, 1 process"], runs[LIMIT], "seconds", "seconds",
                         args.max_other, scale=0.5)  # fmt: skip
            print(f"the limit's own: per-process throughput at 2 processes / at 1 = {own}")
        report = entropy_report(work / "p")
        print(f"bytes: {report['disk_bytes']:.3f} bytes/token on disk, order-0 entropy of the "
              f"ids {report['entropy_bytes']:.3f} bytes/token "
              f"({report['disk_bytes'] / report['entropy_bytes']:.2f}x); shards "
              f"{report['shards_bytes']:,} B, tokenizer.json {report['tokenizer_json']:,} B "
              f"(zstd-3: {report['tokenizer_json_zstd3']:,} B)")  # fmt: skip


def fixed_costs(work: Path, args: argparse.Namespace) -> None:
    """Wall time of runs over one row group of 20 short articles: start-up and shutdown."""
    tiny = work / "tiny"
    build_corpus(tiny, 1, 1, max_rows=20)
    contenders = {}
    for name in args.tokenizers:
        tok = str(SHARED / "tokenizers" / name)
        contenders[f"processes, {name}"] = lambda t=tok: pipeline(tiny, t, work / "t", WORKERS)
        if args.ray and not args.quick:
            contenders[f"--backend ray, {name}"] = lambda t=tok: pipeline(
                tiny, t, work / "tr", WORKERS, "--backend", "ray"
            )
    runs = interleaved(contenders, args.rounds, args.max_other, args.extra_rounds)
    print(f"\nfixed cost (20 articles, {WORKERS} workers):")
    for n, r in runs.items():
        row = summary(r, args.max_other)
        print(f"{n:36} {row['wall']:6.2f} s wall {row['cpu']:6.2f} s cpu (median of "
              f"{row['runs']}), other load {row['other_cores']:.2f} cores"
              f"{' (load)' if row['disturbed'] else ''}")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny corpus, one tokenizer (CI)")
    ap.add_argument("--tokenizers", nargs="+", default=["bert-base-uncased", "unigram-128k"])
    ap.add_argument(
        "--repeats",
        nargs="+",
        type=int,
        default=[1, 8],
        help="corpora: dictwiki repeated N times (8 = 12 M tokens with bert)",
    )
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--extra-rounds", type=int, default=2, help="more rounds if disturbed")
    ap.add_argument(
        "--max-other",
        type=float,
        default=0.25,
        help="cores of other load above which a run counts as disturbed",
    )
    ap.add_argument("--ray", action="store_true", help="also `--backend ray` (x1 only)")
    ap.add_argument("--scaling", action="store_true", help="also 1 worker (not on x1)")
    ap.add_argument("--peers", action="store_true", help="also datatrove and the recipe (x1)")
    ap.add_argument("--skip-fixed", action="store_true")
    args = ap.parse_args()  # fmt: skip
    if args.quick:
        args.tokenizers, args.repeats, args.rounds, args.extra_rounds = (
            args.tokenizers[:1],
            [1],
            1,
            0,
        )
        args.ray = args.peers = args.scaling = False
    work = Path(tempfile.mkdtemp(prefix="bench-"))
    try:
        corpora = {}
        for n in args.repeats:
            rows = 3000 if args.quick else None
            mb = build_corpus(work / f"corpus-x{n}", n, 2 if args.quick else 4 * n, rows) / 1e6
            corpora[f"x{n}"] = work / f"corpus-x{n}"
            print(f"corpus x{n}: {mb:.1f} MB of text on {CORES} cores")
        if not args.skip_fixed:
            fixed_costs(work, args)
        for name in args.tokenizers:
            bench(name, corpora, work, args)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
