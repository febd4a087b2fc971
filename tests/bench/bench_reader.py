"""How soon and how fast the trainer's reader delivers shuffled blocks (a script, not a test).

    .venv/bin/python tests/bench/bench_reader.py            # dictwiki, bert, with litdata if there
    .venv/bin/python tests/bench/bench_reader.py --quick    # seconds; CI runs this

* first batch: a fresh interpreter opens `BlockDataset` (manifest, every shard's metadata) and
  fetches the first shuffled batch of 32 blocks that `BlockSampler` names; wall and CPU time of
  each step, median of `--starts` processes, and which heavy modules the reader imported (none
  of pandas, pyarrow.compute, numpy.ma should be)
* steady state, one process, shuffled batches of 32 x 128 tokens as int64 (what a trainer feeds
  an embedding), tokens/s over `--batches` batches after the first:
  - pipeline: BlockDataset.fetch over BlockSampler keys (windowed shuffle, LRU of chunks)
  - litdata 0.2.76: StreamingDataset(item_loader=TokensLoader(128), shuffle=True) over the same
    train tokens written by litdata's optimize, 32 items stacked per batch
Wall times are noisy on a shared machine; CPU times are printed beside them and the machine's
other load during each measurement too (see bench_pipeline.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(Path(__file__).parent))
SHARED = REPO.parent / "shared"

from bench_pipeline import busy_seconds  # noqa: E402

FIRST = """
import sys, time
c0, t0 = time.process_time(), time.perf_counter()
from pipeline.train.dataset import BlockDataset
from pipeline.train.sampler import BlockSampler
c1, t1 = time.process_time(), time.perf_counter()
data = BlockDataset({data!r}, "train")
keys = next(iter(BlockSampler(data.chunk_sizes, batch_size=32, seed=0)))
c2, t2 = time.process_time(), time.perf_counter()
batch = data.fetch(keys).tokens.astype("int64")
c3, t3 = time.process_time(), time.perf_counter()
assert batch.shape == (32, 128) and batch.any()
heavy = [m for m in ("pandas", "pyarrow.compute", "numpy.ma") if m in sys.modules]
print(json.dumps({{"import": t1 - t0, "open": t2 - t1, "first": t3 - t2,
                  "open_cpu": c2 - c1, "first_cpu": c3 - c2, "heavy": heavy}}))
"""


def make_data(folder: Path, quick: bool) -> str:
    from pipeline.run.config import RunConfig
    from pipeline.run.runner import run_pipeline
    from pipeline.run.worker_pool import ProcessExecutor

    corpus = SHARED / "corpus" / "dictwiki"
    inputs = [str(sorted(corpus.glob("*.parquet"))[0])] if quick else [str(corpus)]
    tokenizer = str(SHARED / "tokenizers" / "bert-base-uncased")
    out = folder / "shards"
    config = RunConfig(inputs=tuple(inputs), tokenizer=tokenizer, output=str(out))
    run_pipeline(config, ProcessExecutor(workers=2), progress_stream=None)
    return str(out)


def first_batch(data: str, starts: int) -> dict:
    runs = []
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for _ in range(starts):
        code = "import json\n" + FIRST.format(data=data)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             env=env, check=True)  # fmt: skip
        runs.append(json.loads(out.stdout))
    keys = ("import", "open", "first", "open_cpu", "first_cpu")
    result: dict = {k: statistics.median(r[k] for r in runs) for k in keys}
    result["heavy"] = sorted({m for r in runs for m in r["heavy"]})
    return result


def steady(batches, count: int) -> dict:
    """tokens/s over `count` batches after a first one (not timed), wall and CPU."""
    it = iter(batches)
    next(it)
    busy, c0, t0 = busy_seconds(), time.process_time(), time.perf_counter()
    tokens = 0
    for _ in range(count):
        batch = next(it)
        tokens += batch.size
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    other = max(0.0, busy_seconds() - busy - cpu) / wall
    return {"tokens_per_s": tokens / wall, "tokens_per_cpu_s": tokens / cpu, "other": other}


def ours(data: str):
    from pipeline.train.dataset import BlockDataset
    from pipeline.train.sampler import BlockSampler

    dataset = BlockDataset(data, "train")
    for keys in BlockSampler(dataset.chunk_sizes, batch_size=32, seed=0):
        yield dataset.fetch(keys).tokens.astype(np.int64)


def litdata_output(data: str, folder: Path) -> str:
    """The same train tokens in litdata's format (optimize with TokensLoader)."""
    code = f"""
import json, numpy as np
from litdata import optimize
from litdata.streaming.item_loader import TokensLoader
from pipeline.train.dataset import BlockDataset
def blocks(chunk):
    data = BlockDataset({data!r}, "train")
    start = int(data.chunk_starts[chunk])
    yield data.fetch(np.arange(start, start + data.chunk_sizes[chunk])).tokens.ravel()
if __name__ == "__main__":
    n = len(BlockDataset({data!r}, "train").chunk_sizes)
    optimize(fn=blocks, inputs=list(range(n)), output_dir={str(folder)!r},
             chunk_size=128 * 2048, item_loader=TokensLoader(), num_workers=1, verbose=False)
"""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    try:
        subprocess.run([sys.executable, f.name], check=True, capture_output=True, env=env)
    finally:
        os.unlink(f.name)
    return str(folder)


def theirs(folder: str):
    from litdata import StreamingDataset
    from litdata.streaming.item_loader import TokensLoader

    dataset = StreamingDataset(folder, item_loader=TokensLoader(block_size=128), shuffle=True,
                               seed=0)  # fmt: skip
    while True:
        batch = []
        for item in dataset:
            batch.append(item)
            if len(batch) == 32:
                yield np.stack([np.asarray(b) for b in batch]).astype(np.int64)
                batch = []


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a `pipeline run` output (default: build one from dictwiki)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--starts", type=int, default=5)
    p.add_argument("--batches", type=int, default=2000)
    args = p.parse_args()
    if args.quick:
        args.starts, args.batches = 1, 50
    with tempfile.TemporaryDirectory(prefix="bench-reader-") as tmp:
        data = args.data or make_data(Path(tmp), args.quick)
        first = first_batch(data, args.starts)
        print(f"first batch (median of {args.starts} fresh processes): import "
              f"{first['import'] * 1e3:.0f} ms, open {first['open'] * 1e3:.1f} ms "
              f"(cpu {first['open_cpu'] * 1e3:.1f}), first shuffled 32x128 batch "
              f"{first['first'] * 1e3:.1f} ms (cpu {first['first_cpu'] * 1e3:.1f}); heavy "
              f"modules imported: {first['heavy'] or 'none'}")  # fmt: skip
        rows = {"pipeline BlockDataset": steady(ours(data), args.batches)}
        if importlib.util.find_spec("litdata") and not args.quick:
            folder = litdata_output(data, Path(tmp) / "litdata")
            rows["litdata StreamingDataset"] = steady(theirs(folder), args.batches)
        print(f"steady state, shuffled 32x128 int64 batches, {args.batches} batches, one process:")
        for name, r in rows.items():
            print(f"  {name:26} {r['tokens_per_s'] / 1e6:8.1f} M tokens/s wall, "
                  f"{r['tokens_per_cpu_s'] / 1e6:8.1f} M tokens/CPU-s, other load "
                  f"{r['other']:.2f} cores")  # fmt: skip
        if first["heavy"]:
            print(f"FAILED: the reader imported {first['heavy']}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
