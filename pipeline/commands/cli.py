"""`pipeline run | inspect | verify | train | demo`: thin argument parsing over the library.

Every user-facing error is a `PipelineError`: one line on stderr, exit code 2 for usage errors
and 1 for data errors. Heavy imports (Ray, polars, torch) happen inside the subcommand.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from collections.abc import Sequence

from pipeline.errors import PipelineError, Terminated, UsageError, brief, one_line
from pipeline.run import config as run_config


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    """The RunConfig's flags (built from the dataclass), then how the run executes."""
    run_config.add_arguments(p)
    p.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes on this machine (default: all cores); ignored on a cluster",
    )
    p.add_argument(
        "--threads-per-worker",
        type=int,
        default=1,
        help="tokenizer threads in each worker (default: %(default)s)",
    )
    p.add_argument(
        "--tokenizer-cache",
        type=int,
        default=None,
        metavar="WORDS",
        help="distinct words each worker's Unigram/BPE tokenizer caches (~260 bytes each when "
        "full; 0: none; the output does not change; default: 1,000,000)",
    )
    p.add_argument(
        "--backend",
        choices=["processes", "ray", "local"],
        default="processes",
        help="processes (the default): forked workers on this machine; ray: a local Ray, or "
        "the cluster at --ray-address; local: every unit in this process (debugging)",
    )
    p.add_argument(
        "--ray-address",
        default=None,
        help="an existing cluster, implies --backend ray ('auto' inside `ray job submit`; "
        "default: none)",
    )
    add_storage_argument(p)
    p.add_argument(
        "--forward-credentials",
        action="store_true",
        help="copy AWS_ACCESS_KEY_ID/SECRET/SESSION_TOKEN into the Ray tasks' runtime env "
        "(readable by anyone who can list the cluster's tasks; default: workers use their own)",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="replace a different run found in --output (default: refuse it)",
    )
    p.add_argument(
        "--quiet", action="store_true", help="no progress lines (default: progress on stderr)"
    )


def add_storage_argument(p: argparse.ArgumentParser) -> None:
    from pipeline.format.storage import ENDPOINT_HELP

    p.add_argument("--storage-endpoint", default=None, metavar="URL", help=ENDPOINT_HELP)


def cmd_run(args: argparse.Namespace) -> int:
    from pipeline.format import storage
    from pipeline.run.runner import executor_for, run_pipeline

    storage.use_endpoint(args.storage_endpoint)
    if args.workers is not None and args.workers < 1:
        raise UsageError(f"--workers: expected at least 1, found {args.workers}; pass 1 or more")
    if args.threads_per_worker < 1:
        raise UsageError(
            f"--threads-per-worker: expected at least 1, found {args.threads_per_worker}; "
            "pass 1 (the default) or more"
        )
    config = run_config.from_args(args)
    from pipeline.run.ray_address import in_ray_job

    # --ray-address implies Ray; so does being a Ray job's driver (its work belongs on the
    # job's cluster, not in processes on the head node), unless --backend local.
    ray_wanted = args.ray_address or (args.backend == "processes" and in_ray_job())
    executor = executor_for(
        "ray" if ray_wanted else args.backend,
        workers=args.workers,
        ray_address=args.ray_address,
        threads_per_worker=args.threads_per_worker,
        forward_credentials=args.forward_credentials,
        log=None if args.quiet else sys.stderr,
    )
    from pipeline.run.encoders import word_cache_for_run

    with word_cache_for_run(args.tokenizer_cache):
        result = run_pipeline(
            config,
            executor,
            overwrite=args.overwrite,
            progress_stream=None if args.quiet else sys.stderr,
        )
    splits = result.manifest.splits
    print(
        f"done: {result.num_units} units ({result.num_units_run} run now), "
        + ", ".join(f"{s} {v.num_blocks:,} blocks" for s, v in splits.items())
        + f", {result.num_tokens:,} document tokens in {result.seconds:.1f}s "
        f"({result.num_tokens / max(result.seconds, 1e-9) / 1e6:.2f} M tokens/s) -> {config.output}"
    )
    for note in result.notes:
        print(f"note: {note}", file=sys.stderr)
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    from pipeline.commands.inspection import main as inspect_main
    from pipeline.format.storage import use_endpoint

    use_endpoint(args.storage_endpoint)
    return inspect_main(args)


def cmd_verify(args: argparse.Namespace) -> int:
    from pipeline.commands.verification import main as verify_main
    from pipeline.format.storage import use_endpoint

    use_endpoint(args.storage_endpoint)
    return verify_main(args)


def cmd_train(args: argparse.Namespace) -> int:
    try:
        from pipeline.train.loop import main as train_main
    except ImportError as exc:
        raise UsageError(
            f"pipeline train: expected torch and transformers, found them missing ({exc}); "
            "run `pip install torch==2.13.0` then `pip install '.[train]'`"
        ) from exc
    return train_main(args.rest)


def cmd_demo(args: argparse.Namespace) -> int:
    from pipeline.commands.demo import main as demo_main

    return demo_main(args)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="pipeline", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="tokenize and pack inputs into shards")
    add_run_arguments(run)
    run.set_defaults(func=cmd_run)

    insp = sub.add_parser("inspect", help="statistics, ledger check and samples of an output")
    insp.add_argument("output")
    insp.add_argument("--json", action="store_true", help="machine-readable summary")
    insp.add_argument("--decode", type=int, default=0, metavar="N", help="print N sample blocks")
    insp.add_argument("--shards", action="store_true", help="a per-shard table")
    insp.add_argument("--top", type=int, default=20, help="most frequent tokens to list")
    add_storage_argument(insp)
    insp.set_defaults(func=cmd_inspect)

    ver = sub.add_parser("verify", help="re-read every shard and check it against the manifest")
    ver.add_argument("output")
    ver.add_argument("--json", action="store_true")
    add_storage_argument(ver)
    ver.set_defaults(func=cmd_verify)

    train = sub.add_parser(
        "train", help="train an MLM on the shards (needs the train extra)", add_help=False
    )
    train.add_argument("rest", nargs=argparse.REMAINDER)
    train.set_defaults(func=cmd_train)

    demo = sub.add_parser("demo", help="build a sample corpus and run everything on it")
    demo.add_argument("--output", default="demo-output")
    demo.add_argument("--tokenizer", default=None, help="default: train a small WordPiece")
    demo.add_argument("--workers", type=int, default=None)
    demo.add_argument(
        "--train-steps",
        type=int,
        default=100,
        help="steps of the closing training run (0 skips it)",
    )
    demo.set_defaults(func=cmd_demo)
    return parser


def _on_sigterm(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt cleanup
    raise Terminated


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["train"]:
        # argparse's REMAINDER does not take a first argument that looks like a flag
        # (`train --data ...`), so the trainer's own flags bypass this parser.
        args = argparse.Namespace(func=cmd_train, rest=argv[1:])
    else:
        args = build_parser().parse_args(argv)
    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = args.func(args)
        sys.stdout.flush()  # a closed pipe shows here, not at exit as "Exception ignored"
        return code
    except BrokenPipeError:
        # `pipeline inspect OUT | head`: the reader has all it wants; not an error.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Terminated:
        # `ray job stop`, Kubernetes, batch schedulers: like Ctrl-C, and said in one line.
        print("stopped (SIGTERM): finished work units are kept; rerun the same command to "
              "resume", file=sys.stderr)  # fmt: skip
        return 128 + signal.SIGTERM
    except PipelineError as exc:
        print(f"error: {one_line(exc)}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:
        # A failed read or write (full disk, lost mount, permissions): nothing half-published.
        print(
            f"error: {brief(exc, 300)}; nothing partial was published under a final name, so fix "
            "the cause "
            "and rerun the same command to resume",
            file=sys.stderr,
        )
        return 1
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to resume", file=sys.stderr)
        return 130
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def entry() -> None:
    """The `pipeline` command: `run` re-executes once on mimalloc (allocator.py); `demo`
    does not, as it also trains, and torch has not been tried on mimalloc."""
    if sys.argv[1:2] == ["run"]:
        from pipeline.run.allocator import preload_mimalloc

        preload_mimalloc()
    sys.exit(main())


if __name__ == "__main__":
    entry()
