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
"""

from __future__ import annotations

import argparse
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

from pipeline.train.dataset import BlockDataset, to_hf_dataset  # noqa: E402
from pipeline.train.masking import MaskingSpec, MLMCollator  # noqa: E402
from pipeline.train.sampler import BlockSampler  # noqa: E402


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


def measure(batches: Callable[[], Iterable[dict]], repeats: int) -> tuple[float, int, int]:
    """(best seconds, masked tokens, batches) over `repeats` passes."""
    best, masked, count = float("inf"), 0, 0
    for _ in range(repeats):
        started = time.perf_counter()
        masked = count = 0
        for batch in batches():
            masked += int((batch["labels"] != -100).sum())
            count += 1
        best = min(best, time.perf_counter() - started)
    return best, masked, count


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


def table(results: dict[str, dict[str, float]]) -> str:
    lines = [f"{'contestant':<22} {'batches':>7} {'seconds':>8} {'masked tok/s':>14} {'vs HF':>7}"]
    base = results.get("HF collator", {}).get("masked_tokens_per_s", 0.0)
    for name, r in results.items():
        ratio = f"{r['masked_tokens_per_s'] / base:>6.1f}x" if base else f"{'-':>7}"
        lines.append(f"{name:<22} {r['batches']:>7.0f} {r['seconds']:>8.3f} "
                     f"{r['masked_tokens_per_s']:>14,.0f} {ratio}")  # fmt: skip
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

    def ours(workers: int) -> Callable[[], Iterable[dict]]:
        def batches() -> Iterable[dict]:
            dataset = BlockDataset(data, "train")  # cold: every pass decompresses again
            order = BlockSampler(dataset.chunk_sizes, batch_size=args.batch_size, seed=0)
            loader = DataLoader(dataset, sampler=order, batch_size=None, num_workers=workers,
                                collate_fn=MLMCollator(spec, seed=0))  # fmt: skip
            return itertools.islice(loader, num_batches)

        return batches

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
        "pipeline, 2 workers": ours(2),
        "HF collator": lambda: (hf_collator(e) for e in examples),
        "HF recipe": recipe,
    }
    if args.quick:
        contestants.pop("pipeline, 2 workers")
    results = {}
    for name, batches in contestants.items():
        seconds, masked, count = measure(batches, args.repeats)
        results[name] = {"batches": count, "seconds": seconds, "masked_tokens": masked,
                         "masked_tokens_per_s": masked / max(seconds, 1e-9)}  # fmt: skip
    return results


if __name__ == "__main__":
    sys.exit(main())
