"""The driver at 10^3-10^5 work units (a script, not a test): what it costs per unit, in memory,
in manifest size and load time, and in planning, when the pipeline's own costs dominate.

    .venv/bin/python tests/bench/bench_scale.py                    # 10^3, 10^4 run; 10^5 scaled
    .venv/bin/python tests/bench/bench_scale.py --run 200 --scaled 1000   # quick

Corpus: dictwiki texts cut to ~1 KB, one row per unit (`--unit-bytes 1` makes every row a unit;
row groups of 8 rows), a word-level `tokenizer.json` built here with `tokenizers` (WordLevel +
Whitespace, so tokenizing is nearly free). Each `--run` size is a real `pipeline run` on a
local Ray (`--workers`), in a fresh process so that its peak RSS is its own; the phases of the
driver are timed by wrapping the runner's functions. The `--scaled` size is not run: its units
are planned from parquet footers (timed), and its output is the largest run's shards
hard-linked under new unit numbers with a manifest built by `build_manifest` from the
re-numbered sidecars, so manifest size, load, inspect, verify and the trainer's open are real.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

REPO = Path(__file__).resolve().parents[2]
SHARED = REPO.parent / "shared"
BIN = Path(sys.executable).parent
TEXT_BYTES = 1024
ROW_GROUP = 8


def build_tokenizer(path: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    texts = pq.read_table(SHARED / "corpus/dictwiki/train-00000-of-00004.parquet", columns=["text"])
    counts: dict[str, int] = {}
    for text in texts.column("text").to_pylist()[:2000]:
        for word in text.split():
            counts[word] = counts.get(word, 0) + 1
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    words = sorted(counts, key=lambda w: (-counts[w], w))[: 30_000 - len(specials)]
    vocab = {t: i for i, t in enumerate(specials + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.BertProcessing(("[SEP]", 3), ("[CLS]", 2))
    tok.save(str(path))


def build_corpus(folder: Path, rows: int, files: int) -> None:
    """`rows` rows of ~TEXT_BYTES each over `files` parquet files, row groups of ROW_GROUP."""
    source = pq.read_table(SHARED / "corpus/dictwiki", columns=["text"]).column("text")
    texts = [t.encode()[:TEXT_BYTES].decode(errors="ignore") for t in source.to_pylist()]
    folder.mkdir(parents=True, exist_ok=True)
    per_file = -(-rows // files)
    for f in range(files):
        lo, hi = f * per_file, min(rows, (f + 1) * per_file)
        table = pa.table(
            {
                "id": [str(i) for i in range(lo, hi)],
                "url": [""] * (hi - lo),
                "title": [""] * (hi - lo),
                "text": [texts[i % len(texts)] for i in range(lo, hi)],
            }
        )
        pq.write_table(table, folder / f"part-{f:04d}.parquet", row_group_size=ROW_GROUP)


DRIVER = r"""
import json, resource, sys, time
from pipeline.run import runner
from pipeline.run.config import RunConfig
from pipeline.run.ray_runner import RayExecutor
phases = {}
def timed(name, fn):
    def wrapper(*a, **k):
        t = time.perf_counter()
        try:
            return fn(*a, **k)
        finally:
            phases[name] = phases.get(name, 0.0) + time.perf_counter() - t
    return wrapper
for name in ("describe_inputs", "plan_units", "finished_units", "_collect", "build_manifest",
             "write_manifest"):
    setattr(runner, name, timed(name, getattr(runner, name)))
corpus, tokenizer, out, workers = sys.argv[1:5]
config = RunConfig(inputs=(corpus,), tokenizer=tokenizer, output=out, unit_bytes=1)
cpu0 = time.process_time(); t0 = time.perf_counter()
result = runner.run_pipeline(config, RayExecutor(workers=int(workers), log=None),
                             progress_stream=None)
wall = time.perf_counter() - t0
cpu = time.process_time() - cpu0
print(json.dumps({"units": result.num_units, "wall_s": wall, "driver_cpu_s": cpu,
                  "driver_peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "blocks": result.manifest.splits["train"].num_blocks,
                  "phases_s": phases}))
"""

READERS = r"""
import json, sys, time
out = sys.argv[1]
from pipeline.format.manifest import load_manifest
from pipeline.train.dataset import BlockDataset
t = time.perf_counter()
m = load_manifest(out)
load = time.perf_counter() - t
t = time.perf_counter()
ds = BlockDataset(out, "train")
opened = time.perf_counter() - t
t = time.perf_counter(); ds[len(ds) - 1]; first = time.perf_counter() - t
print(json.dumps({"load_manifest_s": load, "trainer_open_s": opened,
                  "trainer_first_block_s": first, "blocks": len(ds)}))
"""


def timed_cli(*args: str) -> float:
    started = time.perf_counter()
    proc = subprocess.run([str(BIN / "pipeline"), *args], capture_output=True, text=True)
    if proc.returncode not in (0, 1):
        raise RuntimeError(proc.stderr[-2000:])
    return time.perf_counter() - started


def readers(out: Path) -> dict:
    proc = subprocess.run(
        [sys.executable, "-c", READERS, str(out)], capture_output=True, text=True, check=True
    )
    found = json.loads(proc.stdout.strip().splitlines()[-1])
    found["manifest_mib"] = (out / "manifest.json").stat().st_size / 2**20
    found["inspect_s"] = timed_cli("inspect", "--json", str(out))
    found["verify_s"] = timed_cli("verify", "--json", str(out))
    return found


def plan_only(corpus: Path) -> dict:
    code = (
        "import json, sys, time\n"
        "from pipeline.ingest.sources import list_inputs, describe_input\n"
        "from pipeline.ingest.units import plan_units\n"
        "t = time.perf_counter()\n"
        "files = [describe_input(p, 'text', 'id') for p in list_inputs((sys.argv[1],)).files]\n"
        "units = plan_units(files, 1)\n"
        "print(json.dumps({'units': len(units), 'plan_s': time.perf_counter() - t}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(corpus)], capture_output=True,
                          text=True, check=True)  # fmt: skip
    return json.loads(proc.stdout)


def scale_output(source: Path, target: Path, factor: int) -> int:
    """`source`'s shards hard-linked `factor` times under new unit numbers, with a manifest
    built from the re-numbered sidecars: a real output of factor x as many units."""
    from pipeline.format.manifest import build_manifest, load_manifest, write_manifest
    from pipeline.format.sidecars import Sidecar

    manifest = load_manifest(str(source))
    sidecars: dict[str, list[Sidecar]] = {}
    units = manifest.num_units
    for split in manifest.splits:
        (target / split).mkdir(parents=True)
        cars = [
            Sidecar.from_dict(json.loads(p.read_text()))
            for p in sorted((source / split).glob("shard-*.json"))
        ]
        body, tail = cars[:units], cars[units:]
        out = []
        for k in range(factor):
            for car in body:
                index = k * units + int(car.shard[6:-6])
                name = f"shard-{index:05d}.arrow"
                os.link(source / split / car.shard, target / split / name)
                out.append(Sidecar.from_dict({**car.to_dict(), "shard": name}))
        for car in tail:  # the stitched tail shard keeps its bytes under the last number
            name = f"shard-{factor * units:05d}.arrow"
            os.link(source / split / car.shard, target / split / name)
            out.append(Sidecar.from_dict({**car.to_dict(), "shard": name}))
        sidecars[split] = out
    (target / "tokenizer.json").write_bytes((source / "tokenizer.json").read_bytes())
    scaled = build_manifest(
        config=manifest.config,
        tokenizer=manifest.tokenizer,
        inputs=list(manifest.inputs) * factor,
        skipped_files=[],
        num_units=units * factor,
        sidecars=sidecars,
        pipeline_version=manifest.pipeline_version,
    )
    write_manifest(str(target), scaled)
    return units * factor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=int, nargs="+", default=[1_000, 10_000])
    ap.add_argument("--scaled", type=int, default=100_000)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--keep", action="store_true")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-scale-"))
    env_note = {"cores": os.cpu_count(), "workers": args.workers, "text_bytes": TEXT_BYTES}
    print(json.dumps({"setup": env_note}), flush=True)
    tokenizer = work / "tokenizer.json"
    build_tokenizer(tokenizer)
    results = []
    for n in args.run:
        corpus = work / f"corpus-{n}"
        build_corpus(corpus, n, files=max(1, n // 10_000))
        out = work / f"out-{n}"
        proc = subprocess.run(
            [sys.executable, "-c", DRIVER, str(corpus), str(tokenizer), str(out),
             str(args.workers)],
            capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)},
        )  # fmt: skip
        if proc.returncode:
            raise RuntimeError(proc.stderr[-3000:])
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        row["wall_ms_per_unit"] = 1000 * row["wall_s"] / row["units"]
        row["driver_cpu_ms_per_unit"] = 1000 * row["driver_cpu_s"] / row["units"]
        row.update(readers(out))
        results.append(row)
        print(json.dumps({"run": row}), flush=True)
    biggest = work / f"out-{max(args.run)}"
    factor = max(1, args.scaled // max(args.run))
    scaled = work / f"scaled-{args.scaled}"
    units = scale_output(biggest, scaled, factor)
    row = {"units": units, **readers(scaled)}
    corpus = work / f"corpus-{args.scaled}"
    build_corpus(corpus, args.scaled, files=max(1, args.scaled // 10_000))
    row.update({f"footer_{k}": v for k, v in plan_only(corpus).items()})
    print(json.dumps({"scaled": row}), flush=True)
    if not args.keep:
        subprocess.run(["rm", "-rf", str(work)], check=False)
    else:
        print(f"kept {work}")


if __name__ == "__main__":
    main()
