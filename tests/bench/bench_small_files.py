"""Many small files against one file holding the same rows (a script, not a test).

    python tests/bench/bench_small_files.py            # 1,000 parquet files of 3 rows each
    python tests/bench/bench_small_files.py --ray      # also: byte-identical with 2 Ray workers

Before issue 9 §8 a unit never crossed files: 1,000 files of 3 rows took 26.6 s and gave 4,009
output files, one file of the same rows 1.09 s and 13. Units now pack consecutive small files
up to --unit-bytes, so time and output files follow the bytes. Runs alternate A/B in one
process (page cache warm for both after the first round) and the medians are compared.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from pipeline.run.config import RunConfig  # noqa: E402
from pipeline.run.runner import Executor, LocalExecutor, run_pipeline  # noqa: E402

SHARED = REPO.parent / "shared"
BERT = SHARED / "tokenizers" / "bert-base-uncased"


def build(work: Path, files: int, rows_each: int) -> tuple[Path, Path]:
    table = pq.read_table(SHARED / "corpus" / "dictwiki" / "train-00000-of-00004.parquet")
    table = table.slice(0, files * rows_each)
    many, one = work / "many", work / "one"
    many.mkdir()
    one.mkdir()
    for k in range(files):
        pq.write_table(table.slice(k * rows_each, rows_each), many / f"part-{k:05d}.parquet")
    pq.write_table(table, one / "all.parquet")
    return many, one


def timed_run(corpus: Path, out: Path, executor: Executor) -> tuple[float, int, dict[str, str]]:
    shutil.rmtree(out, ignore_errors=True)
    config = RunConfig(inputs=(str(corpus),), tokenizer=str(BERT), output=str(out))
    started = time.perf_counter()
    result = run_pipeline(config, executor, progress_stream=None)
    seconds = time.perf_counter() - started
    assert result.manifest.splits["train"].num_blocks > 0, "real work"
    files = [p for p in out.rglob("*") if p.is_file()]
    digests = {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in files
        if p.name not in ("timings.json", "run.json", ".lock")
    }
    return seconds, len(files), digests


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=1000)
    parser.add_argument("--rows-each", type=int, default=3)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--ray", action="store_true", help="also compare 2 Ray workers' bytes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        many, one = build(work, args.files, args.rows_each)
        times: dict[str, list[float]] = {"many": [], "one": []}
        outputs: dict[str, tuple[int, dict[str, str]]] = {}
        for _ in range(args.rounds):
            for name, corpus in (("many", many), ("one", one)):
                seconds, count, digests = timed_run(corpus, work / f"out-{name}", LocalExecutor())
                times[name].append(seconds)
                outputs[name] = (count, digests)
        med = {name: statistics.median(t) for name, t in times.items()}
        print(f"{args.files:,} files of {args.rows_each} rows: median {med['many']:.2f} s, "
              f"{outputs['many'][0]} output files")  # fmt: skip
        print(f"one file of {args.files * args.rows_each:,} rows: median {med['one']:.2f} s, "
              f"{outputs['one'][0]} output files")  # fmt: skip
        ratio = med["many"] / med["one"]
        print(f"ratio many/one: {ratio:.2f} (target <= 1.5)")
        shards = [{k: v for k, v in outputs[n][1].items() if k.endswith(".arrow")}
                  for n in ("many", "one")]  # fmt: skip
        print(f"shards byte-identical to the one-file run's: {shards[0] == shards[1]}")
        ok = ratio <= 1.5 and outputs["many"][0] == outputs["one"][0] and shards[0] == shards[1]
        if args.ray:
            from pipeline.run.ray_runner import RayExecutor

            _, _, ray_digests = timed_run(many, work / "out-ray", RayExecutor(workers=2))
            identical = ray_digests == outputs["many"][1]
            print(f"2 Ray workers give the same bytes as the local executor: {identical}")
            ok = ok and identical
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
