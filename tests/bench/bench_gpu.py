"""The trainer on GPUs: DeBERTa-v3-large at block 128, measured (a script, not a test).

    python tests/bench/bench_gpu.py                              # 1 GPU
    torchrun --nproc_per_node=2 tests/bench/bench_gpu.py         # DDP, figures per GPU
    python tests/bench/bench_gpu.py --data OUT                   # an existing `pipeline run` output
    python tests/bench/bench_gpu.py --quick                      # CPU, tiny model: CI runs this

Without CUDA and without --quick it says so and exits 0 (skipped). The model is DeBERTa-v3-large
built from its config (the values below, copied from microsoft/deberta-v3-large's config.json)
with random weights: nothing is downloaded. The data is a `pipeline run` output; by default one
is built from ../shared's dictwiki with the DeBERTa-v3-shaped unigram-128k tokenizer (128,001
ids, within the model's 128,100 embedding rows). Everything runs through the trainer's own
pieces (BlockDataset, BlockSampler, MLMCollator, MaskedLMObjective, AdamW, the HF-equal linear
schedule, TrainStep), so the benchmark measures what `pipeline train` runs. Measured:

* memory: peak `torch.cuda.max_memory_allocated` of one optimizer step (forward + backward with
  AdamW state) per micro-batch size 1, 2, 4, ... until the first out-of-memory;
* speed: per-device batch `--batch-size` in the micro-batches TrainStep finds, `--steps` steps
  after `--warmup` untimed ones: seconds per step, tokens/s per GPU, and the share of wall time
  the loop waited for the DataLoader (goal: < 1 %);
* precision: the loss per step in bf16 autocast and in fp32 from the same initial weights on the
  same blocks with the same masks, `--curve-steps` steps (200 by default), and their largest gap.

The exit code is 1 when a measurement is void (no step ran, a loss is not finite, no tokens), so
CI's --quick run fails loudly instead of rotting.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"

from pipeline.train.dataset import BlockDataset  # noqa: E402
from pipeline.train.masking import MaskingSpec, MLMCollator  # noqa: E402
from pipeline.train.models import (  # noqa: E402
    PRESETS,
    MaskedLMObjective,
    build_optimizer,
    build_scheduler,
)
from pipeline.train.runtime import Runtime, setup_runtime  # noqa: E402
from pipeline.train.sampler import BlockSampler  # noqa: E402
from pipeline.train.step import TrainStep  # noqa: E402

# microsoft/deberta-v3-large config.json (435 M parameters, 128,100 embedding rows).
DEBERTA_V3_LARGE: dict[str, Any] = {
    "model_type": "deberta-v2",
    "attention_probs_dropout_prob": 0.1,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 1024,
    "initializer_range": 0.02,
    "intermediate_size": 4096,
    "max_position_embeddings": 512,
    "relative_attention": True,
    "position_buckets": 256,
    "norm_rel_ebd": "layer_norm",
    "share_att_key": True,
    "pos_att_type": ["p2c", "c2p"],
    "layer_norm_eps": 1e-7,
    "max_relative_positions": -1,
    "position_biased_input": False,
    "num_attention_heads": 16,
    "num_hidden_layers": 24,
    "type_vocab_size": 0,
    "vocab_size": 128100,
    "pad_token_id": 0,
}


def build_model(quick: bool, vocab_size: int, seed: int) -> Any:
    from transformers import AutoConfig, AutoModelForMaskedLM

    values = dict(PRESETS["tiny-deberta-v2"], vocab_size=vocab_size) if quick else DEBERTA_V3_LARGE
    values = dict(values)
    model_type = values.pop("model_type")
    torch.manual_seed(seed)
    return AutoModelForMaskedLM.from_config(AutoConfig.for_model(model_type, **values)).float()


def make_shards(folder: Path, quick: bool) -> str:
    from pipeline.run.config import RunConfig
    from pipeline.run.runner import LocalExecutor, run_pipeline

    corpus = SHARED / "corpus" / "dictwiki"
    tokenizer = SHARED / "tokenizers" / ("bert-base-uncased" if quick else "unigram-128k")
    inputs = [str(sorted(corpus.glob("*.parquet"))[0])] if quick else [str(corpus)]
    out = folder / "shards"
    config = RunConfig(
        inputs=tuple(inputs), tokenizer=str(tokenizer), output=str(out), unit_bytes=512 * 1024
    )
    run_pipeline(config, LocalExecutor(), progress_stream=None)
    return str(out)


class Bench:
    """The trainer's pieces for one precision, from the same weights, blocks and masks."""

    def __init__(self, data: str, rt: Runtime, args: argparse.Namespace, micro: int) -> None:
        self.rt, self.args = rt, args
        self.dataset = BlockDataset(data, "train", cache_chunks=args.window + 2)
        spec = MaskingSpec.from_manifest(self.dataset.tokenizer)
        self.model = build_model(args.quick, self.dataset.tokenizer.vocab_size, 0)
        self.model.to(rt.device).train()
        objective = MaskedLMObjective(self.model)
        runner: torch.nn.Module = objective
        if rt.distributed:
            ids = [rt.device.index] if rt.cuda else None
            runner = torch.nn.parallel.DistributedDataParallel(objective, device_ids=ids)
        optimizer = build_optimizer(self.model, 1e-4, 0.01, fused=rt.cuda)
        total = args.warmup + max(args.steps, args.curve_steps)
        self.step = TrainStep(
            runner=runner, model=self.model, optimizer=optimizer,
            scheduler=build_scheduler(optimizer, total, max(1, total // 10)), rt=rt,
            batch_size=args.batch_size, micro_batch_size=micro or args.batch_size,
            automatic=not micro and rt.cuda, max_grad_norm=1.0, say=False,
        )  # fmt: skip
        sampler = BlockSampler(
            self.dataset.chunk_sizes, batch_size=args.batch_size, seed=0, rank=rt.rank,
            world_size=rt.world_size, window_chunks=args.window,
        )  # fmt: skip
        self.loader = torch.utils.data.DataLoader(
            self.dataset, sampler=sampler, batch_size=None, collate_fn=MLMCollator(spec, seed=0),
            num_workers=args.workers, pin_memory=rt.cuda,
            prefetch_factor=4 if args.workers else None,
        )  # fmt: skip

    def run(self, steps: int, warmup: int) -> dict[str, Any]:
        """Losses of every step; seconds, data wait of the steps after `warmup`."""
        batches = iter(self.loader)
        losses, seconds, waited = [], 0.0, 0.0
        for i in range(warmup + steps):
            _sync(self.rt)
            started = time.perf_counter()
            batch = next(batches)
            wait = time.perf_counter() - started
            result = self.step([batch])
            loss = self.rt.all_reduce_float(result.loss_sum) / max(int(result.masked), 1)
            _sync(self.rt)
            losses.append(loss)
            if i >= warmup:
                seconds += time.perf_counter() - started
                waited += wait
        return {"losses": losses, "seconds": seconds, "data_wait": waited, "steps": steps}


def _sync(rt: Runtime) -> None:
    if rt.cuda:
        torch.cuda.synchronize(rt.device)


def peak_memory(data: str, rt: Runtime, args: argparse.Namespace) -> dict[int, float | None]:
    """GiB at the peak of one step per micro-batch size (None: out of memory; CPU: not
    measured, but every size still runs a step so the code path is exercised)."""
    out: dict[int, float | None] = {}
    sizes = [2**k for k in range(int(math.log2(args.batch_size)) + 1)]
    for size in sizes[: 2 if args.quick else None]:
        one = argparse.Namespace(**{**vars(args), "batch_size": size})
        bench = Bench(data, rt, one, micro=size)
        bench.run(1, 0)  # the first step allocates AdamW's state
        if rt.cuda:
            torch.cuda.reset_peak_memory_stats(rt.device)
        try:
            bench.run(1, 0)
        except torch.OutOfMemoryError:
            out[size] = None
        else:
            out[size] = torch.cuda.max_memory_allocated(rt.device) / 2**30 if rt.cuda else math.nan
        del bench
        if rt.cuda:
            torch.cuda.empty_cache()
        if out[size] is None:
            break
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", help="a `pipeline run` output (default: build one from dictwiki)")
    p.add_argument("--batch-size", type=int, default=512, help="per device, as the seed's")
    p.add_argument("--micro-batch-size", type=int, default=0, help="0: found as the trainer does")
    p.add_argument("--steps", type=int, default=20, help="timed steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    p.add_argument("--curve-steps", type=int, default=200, help="bf16 vs fp32 loss curves")
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--window", type=int, default=16)
    p.add_argument("--quick", action="store_true", help="CPU, tiny model, a few steps (CI)")
    p.add_argument("--json", help="also write every figure and both loss curves here")
    args = p.parse_args(argv)
    if args.quick:
        args.batch_size, args.steps, args.warmup, args.curve_steps = 4, 3, 1, 4
        args.workers, args.micro_batch_size = 1, 2
    elif not torch.cuda.is_available():
        print("skipped: no CUDA device (run with --quick for the CPU check)", file=sys.stderr)
        return 0
    if args.quick:
        torch.set_num_threads(1)
    device = "cpu" if args.quick else "cuda"
    rt = setup_runtime(device, "bf16")
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as tmp:
        data = args.data or make_shards(Path(tmp), args.quick)
        results = measure(data, rt, args)
    if rt.rank == 0:
        print(table(results, rt))
        if args.json:
            Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    failed = problems(results)
    for problem in failed:
        print(f"FAILED: {problem}", file=sys.stderr)
    rt.close()
    return 1 if failed else 0


def measure(data: str, rt: Runtime, args: argparse.Namespace) -> dict[str, Any]:
    memory = peak_memory(data, rt, args)
    bf16 = Bench(data, rt, args, micro=args.micro_batch_size)
    speed = bf16.run(args.steps, args.warmup)
    block = bf16.dataset.block_size
    micro = bf16.step.micro_batch_size
    curves = {}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", None)):
        same = Runtime(rank=rt.rank, world_size=rt.world_size, device=rt.device, amp_dtype=dtype)
        curves[name] = Bench(data, same, args, micro=micro).run(args.curve_steps, 0)["losses"]
    gaps = [abs(a - b) for a, b in zip(curves["bf16"], curves["fp32"], strict=True)]
    per_step = speed["seconds"] / max(speed["steps"], 1)
    return {
        "world_size": rt.world_size,
        "device": torch.cuda.get_device_name(rt.device) if rt.cuda else "cpu",
        "batch_size": args.batch_size,
        "micro_batch_size": micro,
        "peak_gib_per_micro_batch": {str(k): v for k, v in memory.items()},
        "seconds_per_step": per_step,
        "tokens_per_s_per_gpu": args.batch_size * block / per_step if per_step else 0.0,
        "data_wait_share": speed["data_wait"] / speed["seconds"] if speed["seconds"] else 1.0,
        "timed_steps": speed["steps"],
        "loss_curves": curves,
        "max_loss_gap_bf16_fp32": max(gaps) if gaps else math.nan,
        "final_loss_gap_bf16_fp32": gaps[-1] if gaps else math.nan,
    }


def table(r: dict[str, Any], rt: Runtime) -> str:
    memory = ", ".join(
        f"{k}: {'OOM' if v is None else ('-' if math.isnan(v) else f'{v:.1f} GiB')}"
        for k, v in r["peak_gib_per_micro_batch"].items()
    )
    curve = r["loss_curves"]
    marks = sorted({0, *range(0, len(curve["bf16"]), 20), len(curve["bf16"]) - 1})
    lines = [
        f"device                    {r['device']} x {r['world_size']}",
        f"per-device batch          {r['batch_size']} blocks in micro-batches of "
        f"{r['micro_batch_size']}",
        f"peak memory per micro     {memory}",
        f"seconds per step          {r['seconds_per_step']:.3f} ({r['timed_steps']} timed steps)",
        f"tokens/s per GPU          {r['tokens_per_s_per_gpu']:,.0f}",
        f"data wait share           {100 * r['data_wait_share']:.2f} % (goal < 1 %)",
        f"bf16 - fp32 loss gap      max {r['max_loss_gap_bf16_fp32']:.4f}, final "
        f"{r['final_loss_gap_bf16_fp32']:.4f}",
        "step   bf16 loss   fp32 loss",
        *(f"{i + 1:>4} {curve['bf16'][i]:>11.4f} {curve['fp32'][i]:>11.4f}" for i in marks),
    ]
    return "\n".join(lines)


def problems(r: dict[str, Any]) -> list[str]:
    """What makes the measurement void."""
    out = []
    if r["timed_steps"] < 1 or not r["tokens_per_s_per_gpu"] > 0:
        out.append(f"no timed step ran ({r['timed_steps']} steps)")
    for name, losses in r["loss_curves"].items():
        if not losses or not all(math.isfinite(x) and x > 0 for x in losses):
            out.append(f"{name}: losses missing or not finite: {list(itertools.islice(losses, 5))}")
    first = next(iter(r["peak_gib_per_micro_batch"].values()), None)
    if first is None:
        out.append("not even a micro-batch of 1 block fits (or none was measured)")
    return out


if __name__ == "__main__":
    sys.exit(main())
