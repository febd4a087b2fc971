"""Masked tokens/s of the training data path, side by side (a script, not a test).

    .venv/bin/python tests/bench/bench_datapath.py             # all of dictwiki, batch 512
    .venv/bin/python tests/bench/bench_datapath.py --quick     # seconds; CI can run this
    .venv/bin/python tests/bench/bench_datapath.py --data OUT  # an existing `pipeline run` output

Every contestant produces the same thing from the same training blocks: batches of
`--batch-size` blocks as torch tensors `input_ids` + `labels` with 15 % of tokens masked
(80/10/10), one process, no workers unless named. masked tokens/s = labels != -100 over wall
time; each contestant runs `--repeats` times over the same batches and the best pass counts.
The table is printed first; then the exit code is 1 if a contestant produced no masked tokens
or fewer batches than asked, so a broken data path fails CI instead of printing a number.
* pipeline: BlockDataset (read and decompress shards on demand) + BlockSampler (shuffle) +
  MLMCollator (mask, collate), through a torch DataLoader: the path `pipeline train` uses
* pipeline, 2 workers: the same with DataLoader(num_workers=2)
* HF collator: DataCollatorForLanguageModeling alone, on examples already in memory as Python
  lists with a special_tokens_mask (what run_mlm.py's tokenize + group_texts yield): no reading
* HF recipe: datasets.Dataset of the same blocks (+ special_tokens_mask) shuffled by a
  DataLoader with DataCollatorForLanguageModeling, as `Trainer` feeds it
* whole-word, ngram: the "pipeline" row with `--masking whole-word` / `--masking ngram` (the
  dataset then also rebuilds document starts, which word masking needs)
* collator token / whole-word / ngram: MLMCollator alone on the same batches already in memory
  (tokens + document starts): the masking cost by itself, strategy against strategy
Passes are interleaved (round-robin over contestants, `--repeats` rounds) so that the noise of
a shared machine hits every contestant alike; the table shows each contestant's best pass, and
"vs token" is the median over rounds of the masked tokens/s ratio to the "pipeline" row (for
the collator rows, to "collator token") in the same round.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
TOKENIZER = SHARED / "tokenizers" / "bert-base-uncased"

from pipeline.format.paths import TOKENIZER_FILE  # noqa: E402
from pipeline.train.dataset import BlockDataset, to_hf_dataset  # noqa: E402
from pipeline.train.masking import MaskingSpec, MLMCollator  # noqa: E402
from pipeline.train.sampler import BlockSampler  # noqa: E402
from pipeline.train.word_starts import load_word_table  # noqa: E402


def make_shards(folder: Path, quick: bool) -> str:
    from pipeline.run.config import RunConfig
    from pipeline.run.runner import LocalExecutor, run_pipeline

    corpus = SHARED / "corpus" / "dictwiki"
    inputs = [str(sorted(corpus.glob("*.parquet"))[0])] if quick else [str(corpus)]
    out = folder / "shards"
    config = RunConfig(
        inputs=tuple(inputs), tokenizer=str(TOKENIZER), output=str(out), unit_bytes=512 * 1024
    )
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    return str(out)


def one_pass(batches: Callable[[], Iterable[dict]]) -> tuple[float, int, int]:
    """(seconds, masked tokens, batches) of one pass."""
    started = time.perf_counter()
    masked = count = 0
    for batch in batches():
        masked += int((batch["labels"] != -100).sum())
        count += 1
    return time.perf_counter() - started, masked, count


def measure(
    contestants: dict[str, Callable[[], Iterable[dict]]], repeats: int
) -> dict[str, list[tuple[float, int, int]]]:
    """Per contestant, each round's (seconds, masked tokens, batches); rounds interleave the
    contestants, so neighbours in the dict run close together in time."""
    passes: dict[str, list[tuple[float, int, int]]] = {name: [] for name in contestants}
    for _ in range(repeats):
        for name, batches in contestants.items():
            passes[name].append(one_pass(batches))
    return passes


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a `pipeline run` output (default: build one from dictwiki)")
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--batches", type=int, default=100, help="per pass (dictwiki: 22 an epoch)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--quick", action="store_true", help="one file, 4 batches of 256, 1 pass")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.batches, args.repeats = 256, 4, 1
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory(prefix="bench-datapath-") as tmp:
        data = args.data or make_shards(Path(tmp), args.quick)
        results = run(data, args, Path(tmp))
    print(json.dumps(results, indent=1) if args.json else table(results))
    failed = problems(results, args.batches)
    for problem in failed:  # CI runs --quick: a data path that masks nothing must fail it
        print(f"FAILED: {problem}", file=sys.stderr)
    return 1 if failed else 0


BASELINES = {"whole-word": "pipeline", "ngram": "pipeline"}
BASELINES |= {f"collator {m}": "collator token" for m in ("whole-word", "ngram")}
NAME_WIDTH = 22


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'contestant':<{NAME_WIDTH}} {'batches':>7} {'seconds':>8} {'masked tok/s':>14} "
             f"{'vs HF':>7} {'vs token':>8}"]  # fmt: skip
    base = results.get("HF collator", {}).get("masked_tokens_per_s", 0.0)
    for name, r in results.items():
        ratio = f"{r['masked_tokens_per_s'] / base:>6.1f}x" if base else f"{'-':>7}"
        token = results.get(BASELINES.get(name, ""), {}).get("masked_tokens_per_s", 0.0)
        vs_token = f"{r['vs_token']:>7.2f}x" if token and "vs_token" in r else f"{'-':>8}"
        lines.append(f"{name:<{NAME_WIDTH}} {r['batches']:>7.0f} {r['seconds']:>8.3f} "
                     f"{r['masked_tokens_per_s']:>14,.0f} {ratio} {vs_token}")  # fmt: skip
    return "\n".join(lines)


def problems(results: dict[str, dict[str, float]], num_batches: int) -> list[str]:
    """What makes the measurement void: a contestant that masked nothing or ran short."""
    out = [] if results else ["no contestant ran"]
    for name, r in results.items():
        if r["masked_tokens"] <= 0:
            out.append(f"{name}: produced no masked tokens in {r['batches']:.0f} batches")
        if r["batches"] != num_batches:
            out.append(f"{name}: produced {r['batches']:.0f} batches, expected {num_batches}")
    return out


def run(data: str, args: argparse.Namespace, tmp: Path) -> dict[str, dict[str, float]]:
    import datasets
    import transformers

    datasets.disable_progress_bars()
    probe = BlockDataset(data, "train")
    spec = MaskingSpec.from_manifest(probe.tokenizer)
    num_batches = args.batches
    sampler = BlockSampler(probe.chunk_sizes, batch_size=args.batch_size, seed=0)
    keys = list(itertools.islice(iter(sampler), num_batches))  # the blocks every contestant uses

    words = load_word_table(Path(data, TOKENIZER_FILE), spec.vocab_size)
    specs = {m: dataclasses.replace(spec, strategy=m, words=words) for m in ("whole-word", "ngram")}
    specs["token"] = spec

    def ours(workers: int, masking: str = "token") -> Callable[[], Iterable[dict]]:
        def batches() -> Iterable[dict]:
            # cold: every pass decompresses again; word masking needs the document starts
            dataset = BlockDataset(data, "train", with_doc_starts=masking != "token")
            order = BlockSampler(dataset.chunk_sizes, batch_size=args.batch_size, seed=0)
            loader = DataLoader(dataset, sampler=order, batch_size=None, num_workers=workers,
                                collate_fn=MLMCollator(specs[masking], seed=0))  # fmt: skip
            return itertools.islice(loader, num_batches)

        return batches

    in_memory = BlockDataset(data, "train", with_doc_starts=True)
    blocks = [in_memory[batch_keys] for batch_keys in keys]

    def collator_alone(masking: str) -> Callable[[], Iterable[dict]]:
        collator = MLMCollator(specs[masking], seed=0)
        return lambda: (collator(batch) for batch in blocks)

    tokenizer = transformers.AutoTokenizer.from_pretrained(str(TOKENIZER))
    hf_collator = transformers.DataCollatorForLanguageModeling(tokenizer, mlm_probability=0.15)
    special = np.isin(np.arange(spec.vocab_size), spec.special_ids)
    examples = []
    for batch_keys in keys:
        tokens = probe[batch_keys].tokens
        examples.append([{"input_ids": row.tolist(), "special_tokens_mask":
                          special[row].astype(int).tolist()} for row in tokens])  # fmt: skip

    hf = to_hf_dataset(data, "train", cache_dir=str(tmp / "hf-cache")).remove_columns("doc_starts")
    hf = hf.map(lambda b: {"special_tokens_mask": [special[np.asarray(r)].astype(int).tolist()
                                                   for r in b["input_ids"]]},
                batched=True)  # fmt: skip

    def recipe() -> Iterable[dict]:
        shuffle = torch.Generator().manual_seed(0)
        loader = DataLoader(hf, batch_size=args.batch_size, shuffle=True, drop_last=True,
                            collate_fn=hf_collator, generator=shuffle)  # fmt: skip
        epochs = itertools.chain.from_iterable(itertools.repeat(loader))  # a new shuffle each
        return itertools.islice(epochs, num_batches)

    contestants = {
        "pipeline": ours(0),
        "whole-word": ours(0, "whole-word"),
        "ngram": ours(0, "ngram"),
        "pipeline, 2 workers": ours(2),
        "HF collator": lambda: (hf_collator(e) for e in examples),
        "HF recipe": recipe,
    }
    contestants |= {f"collator {m}": collator_alone(m) for m in ("token", "whole-word", "ngram")}
    if args.quick:
        contestants.pop("pipeline, 2 workers")
    passes = measure(contestants, args.repeats)
    results = {}
    for name, rounds in passes.items():
        seconds, masked, count = min(rounds)  # the best pass
        results[name] = {"batches": count, "seconds": seconds, "masked_tokens": masked,
                         "masked_tokens_per_s": masked / max(seconds, 1e-9)}  # fmt: skip
        if name in BASELINES:  # the median over rounds of this round's ratio: robust to load
            paired = zip(rounds, passes[BASELINES[name]], strict=True)
            ratios = [(m / max(t, 1e-9)) / (bm / bt) for (t, m, _), (bt, bm, _) in paired if bm]
            if ratios:  # a baseline that masked nothing is reported by problems()
                results[name]["vs_token"] = float(np.median(ratios))
    return results


if __name__ == "__main__":
    sys.exit(main())
