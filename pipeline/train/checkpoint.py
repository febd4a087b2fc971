"""Checkpoints: written atomically, rotated (last N + best by eval loss), restored exactly.

`RUN/checkpoints/step-00000100/` holds the model (`save_pretrained`: config.json +
model.safetensors, loadable with `from_pretrained`), optimizer.pt, scheduler.pt,
trainer_state.json (step, sampler state, eval loss, data identity, config) and one
rng-rank{R}.pt per rank (Python, NumPy, torch CPU and the rank's own CUDA device's generator
states). Everything is written into `.tmp-step-...` first and renamed into place when complete,
so a folder named `step-*` is always a whole checkpoint; a crash leaves only a `.tmp-*` folder,
removed later. The best checkpoint by eval loss survives rotation: its weights become RUN/model.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import UsageError
from pipeline.format import storage
from pipeline.train import run_folder
from pipeline.train.run_folder import STATE_FILE

FOLDER = run_folder.CHECKPOINTS
PREFIX = run_folder.STEP_PREFIX


def checkpoint_path(run: str, step: int) -> Path:
    return Path(run, FOLDER, f"{PREFIX}{step:08d}")


def list_checkpoints(run: str) -> list[Path]:
    """Complete checkpoints of a run folder, oldest first."""
    folder = Path(run, FOLDER)
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and p.is_dir()]
    return sorted(p for p in found if (p / STATE_FILE).is_file())


def resolve_resume(run: str, resume: str) -> Path:
    """The checkpoint that --resume names: 'latest' (in the run folder) or a path."""
    if resume == "latest":
        found = list_checkpoints(run)
        if not found:
            raise UsageError(
                f"--resume: expected a checkpoint in {Path(run, FOLDER)}, found none; start "
                "without --resume or pass the path of a checkpoint folder"
            )
        return found[-1]
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise UsageError(
            f"--resume {resume}: expected a checkpoint folder with {STATE_FILE}, found none; "
            f"pass a folder like {checkpoint_path(run, 100)}"
        )
    return path


def prepare_run(
    run: str, prior: dict[str, Any] | None, config: dict[str, Any], world_size: int, rank: int
) -> None:
    """Refuse a fresh run over an earlier one's checkpoints (unless --overwrite, which clears
    them) or a resume that cannot continue; remove what a crashed save left. Every rank
    checks first that the run would replace or delete only what a trainer run wrote."""
    run_folder.check_run_folder(run, config["model"])
    if rank == 0:
        remove_partial(run)
    if prior is None:
        if list_checkpoints(run) and not config["overwrite"]:
            raise UsageError(
                f"--output {run}: expected a new run folder, found checkpoints of an earlier "
                "run; pass --resume to continue it, --overwrite to start over (deletes them) "
                "or choose another --output"
            )
        if config["overwrite"] and rank == 0:
            clear_run(run)
        return
    old = prior["config"]
    for key in ("seed", "shuffle_window"):  # they define which blocks come next
        if old[key] != config[key]:
            flag = key.replace("_", "-")
            raise UsageError(
                f"--{flag} {config[key]}: expected {old[key]} as in the checkpoint, found "
                f"{config[key]}; resume with --{flag} {old[key]} or start a new run"
            )
    keys = ("batch_size", "grad_accum", "lr", "max_steps", "epochs", "mlm_probability")
    keys += ("masking", "max_ngram")
    changed = [k for k in keys if old.get(k, config[k]) != config[k]]  # absent: older run
    if prior.get("world_size") != world_size:
        changed.append("world size")
    if changed:
        print(
            f"note: resuming with other {', '.join(changed)} than the checkpoint: the data "
            "continues where it stopped, but the run is no longer the uninterrupted one",
            file=sys.stderr,
        )


def clear_run(run: str) -> None:
    """What an earlier trainer run wrote into the folder (for --overwrite), and nothing else:
    its checkpoints, its export and its logs, each recognised as its own (run_folder.py)."""
    folder = Path(run)
    checkpoints = folder / FOLDER
    if checkpoints.is_dir():
        for path in checkpoints.iterdir():
            if run_folder.is_own_checkpoint_entry(path):
                shutil.rmtree(path)
        if not any(checkpoints.iterdir()):
            checkpoints.rmdir()
    export = folder / run_folder.EXPORT_DIR
    if export.is_dir() and not run_folder.foreign_in_export(export):
        shutil.rmtree(export)
    for path in [folder / run_folder.METRICS_FILE, *folder.glob(run_folder.SAMPLES_PATTERN)]:
        if run_folder.is_own_log(path):
            path.unlink()


def model_files(path: Path) -> list[Path]:
    """The files of a checkpoint that `save_pretrained` wrote (what `from_pretrained` reads)."""
    training = {STATE_FILE, "optimizer.pt", "scheduler.pt"}
    return sorted(
        p
        for p in path.iterdir()
        if p.is_file() and p.name not in training and not p.name.startswith("rng-rank")
    )


def read_state(path: Path) -> dict[str, Any]:
    return json.loads((path / STATE_FILE).read_text())


def save_checkpoint(
    run: str,
    step: int,
    *,
    model: Any,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    state: dict[str, Any],
    rank: int,
    device: torch.device,
    barrier: Callable[[], None],
    keep_last: int,
) -> Path:
    """Every rank calls this; rank 0 writes the shared parts, each rank its RNG states."""
    final = checkpoint_path(run, step)
    tmp = final.with_name(f".tmp-{final.name}")
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        model.save_pretrained(str(tmp))
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1, sort_keys=True) + "\n")
    barrier()
    torch.save(rng_state(device), tmp / f"rng-rank{rank}.pt")
    barrier()
    if rank == 0:
        # Durable before it is named complete: every file, the folder, then the rename.
        # storage's fsync helper (the project's only one) takes files and folders alike.
        for item in tmp.iterdir():
            storage.fsync_path(item)
        storage.fsync_path(tmp)
        if final.exists():  # the same step again, after resuming from an earlier checkpoint
            shutil.rmtree(final)
        os.replace(tmp, final)
        storage.fsync_path(final.parent)
        rotate(run, keep_last)
    barrier()
    return final


def rotate(run: str, keep_last: int) -> list[Path]:
    """Delete checkpoints but the newest `keep_last` and the best by eval loss; return kept."""
    found = list_checkpoints(run)
    if keep_last <= 0:
        return found
    scored = [(read_state(p).get("eval_loss"), p) for p in found]
    scored = [(loss, p) for loss, p in scored if loss is not None]
    keep = set(found[-keep_last:])
    if scored:
        keep.add(min(scored, key=lambda item: item[0])[1])
    for path in found:
        if path not in keep:
            shutil.rmtree(path, ignore_errors=True)
    return [p for p in found if p in keep]


def remove_partial(run: str) -> None:
    """The `.tmp-step-N` folders of crashed saves (only those: the name is the trainer's)."""
    folder = Path(run, FOLDER)
    if folder.is_dir():
        for path in folder.glob(f".tmp-{PREFIX}*"):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)


def restore(
    path: Path,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    rank: int,
    device: torch.device,
) -> None:
    """Load optimizer, scheduler and this rank's RNG states (the model is loaded separately)."""
    optimizer.load_state_dict(
        torch.load(path / "optimizer.pt", map_location=device, weights_only=True)
    )
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=True))
    rng_file = path / f"rng-rank{rank}.pt"
    if rng_file.is_file():
        # Our own file with Python and NumPy generator states, which are not plain tensors.
        set_rng_state(torch.load(rng_file, weights_only=False), device)
    else:
        print(
            f"warning: {rng_file} not found (the run had fewer ranks); dropout of rank {rank} "
            "will not repeat the original run",
            file=sys.stderr,
        )


def rng_state(device: torch.device) -> dict[str, Any]:
    """This process's generators: Python, NumPy, torch CPU and, on a GPU, its own device's only
    (every rank saves its own file; a resume with fewer visible GPUs must still load it)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if device.type != "cuda" or cuda is None:
        return
    if isinstance(cuda, list):  # checkpoints before the per-device state held every GPU's
        cuda = cuda[device.index or 0] if len(cuda) > (device.index or 0) else None
    if cuda is not None:
        torch.cuda.set_rng_state(cuda, device)
