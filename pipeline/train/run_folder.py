"""What in a run folder (--output) the trainer wrote, and so may replace or delete.

Users point --output at folders that hold other things: a project folder with their own
`model/` (weights, vocab, notes), another tool's `metrics.jsonl`. The trainer owns only what it
wrote and can recognise as its own:
- `model/` with `trainer_export.json`, which lists the files the export wrote;
- `checkpoints/step-N/` with `trainer_state.json`, and `checkpoints/.tmp-step-N/` (a crashed
  save); `.tmp-model/` (a crashed export: the marker is written into it first);
- `metrics.jsonl` that opens with the trainer's start record, `samples-rank*.jsonl` of its
  step records (or empty: truncated by a run that stopped before writing).
Anything else under those names stops the run at its start, in one line naming the files
(`--overwrite` included: it never deletes what no trainer run wrote); so does a `--model` that
the export would overwrite.
"""

from __future__ import annotations

import fnmatch
import json
from pathlib import Path

from pipeline.errors import UsageError

EXPORT_DIR = "model"
EXPORT_TMP = ".tmp-model"
EXPORT_FILE = "trainer_export.json"  # in RUN/model: which step, why, and the files written
CHECKPOINTS = "checkpoints"
STATE_FILE = "trainer_state.json"  # in each checkpoint folder
STEP_PREFIX = "step-"
METRICS_FILE = "metrics.jsonl"
SAMPLES_PATTERN = "samples-rank*.jsonl"
# What `save_pretrained` and the export write: the files of an export whose marker predates
# its list of files.
EXPORT_PATTERNS = (
    "config.json", "generation_config.json", "tokenizer.json", EXPORT_FILE, "model.safetensors",
    "model-*-of-*.safetensors", "model.safetensors.index.json", "pytorch_model*.bin*",
)  # fmt: skip


def check_run_folder(run: str, model: str) -> None:
    """Refuse, before anything is written, a run whose export or --overwrite would replace or
    delete a file that no trainer run wrote."""
    inside = _export_target(run, model)
    if inside is not None:
        raise UsageError(
            f"--model {model}: expected a model outside the folder this run exports to, found "
            f"it inside {inside}, which the export at the end replaces; copy the model "
            f"elsewhere and pass that, or choose another --output"
        )
    found = foreign_files(run)
    if found:
        names = ", ".join(str(p) for p in found[:5]) + (" ..." if len(found) > 5 else "")
        raise UsageError(
            f"--output {run}: expected a new folder or one that `pipeline train` wrote, found "
            f"{len(found)} file(s) under the trainer's names that no trainer run wrote: "
            f"{names}; move them out of {run} or choose another --output (--overwrite never "
            f"deletes them)"
        )


def _export_target(run: str, model: str) -> Path | None:
    """The trainer-written folder that --model lies in, if it is one the run replaces."""
    source = Path(model).resolve()
    if not source.exists():
        return None  # a preset name
    for name in (EXPORT_DIR, EXPORT_TMP):
        target = Path(run, name).resolve()
        if source == target or target in source.parents:
            return Path(run, name)
    return None


def foreign_files(run: str) -> list[Path]:
    """Files and folders under the trainer's names in `run` that no trainer run wrote."""
    folder = Path(run)
    if not folder.is_dir():
        return []
    found = foreign_in_export(folder / EXPORT_DIR)
    tmp = folder / EXPORT_TMP
    if tmp.exists() and not (tmp.is_dir() and _is_crashed_export(tmp)):
        found.append(tmp)
    found += _foreign_in_checkpoints(folder / CHECKPOINTS)
    for path in [folder / METRICS_FILE, *sorted(folder.glob(SAMPLES_PATTERN))]:
        if path.exists() and not is_own_log(path):
            found.append(path)
    return found


def foreign_in_export(model: Path) -> list[Path]:
    """model/ itself when no export wrote it, else the files in it the export did not write."""
    if not model.exists():
        return []
    marker = model / EXPORT_FILE
    if not model.is_dir() or not marker.is_file():
        return [model]
    try:
        recorded = json.loads(marker.read_text()).get("files")
    except (ValueError, AttributeError):
        return [model]
    return [p for p in sorted(model.iterdir()) if not _exported(p, recorded)]


def _exported(path: Path, recorded: list[str] | None) -> bool:
    if not path.is_file():
        return False
    if recorded is not None:
        return path.name in recorded or path.name == EXPORT_FILE
    return any(fnmatch.fnmatchcase(path.name, pattern) for pattern in EXPORT_PATTERNS)


def _is_crashed_export(tmp: Path) -> bool:
    return (tmp / EXPORT_FILE).is_file() or not any(tmp.iterdir())


def _foreign_in_checkpoints(folder: Path) -> list[Path]:
    if not folder.exists():
        return []
    if not folder.is_dir():
        return [folder]
    return [p for p in sorted(folder.iterdir()) if not is_own_checkpoint_entry(p)]


def is_own_checkpoint_entry(path: Path) -> bool:
    """A complete checkpoint (`step-N/` with its state file) or a crashed save's `.tmp-step-N/`."""
    if not path.is_dir():
        return False
    if path.name.startswith(f".tmp-{STEP_PREFIX}"):
        return True
    return path.name.startswith(STEP_PREFIX) and (path / STATE_FILE).is_file()


def is_own_log(path: Path) -> bool:
    """metrics.jsonl opens with the trainer's start record, a samples log with a step record
    of keys and masks; either may be empty (truncated by a run that wrote nothing more)."""
    if not path.is_file():
        return False
    with open(path, "rb") as f:
        first = f.readline(1 << 20).strip()
    if not first:
        return not path.read_bytes().strip()
    try:
        record = json.loads(first)
    except ValueError:
        return False
    if not isinstance(record, dict):
        return False
    if path.name == METRICS_FILE:
        return record.get("event") == "start" and "total_steps" in record
    return {"step", "keys", "masks"} <= record.keys()
