"""When the loop evaluates, saves and logs, and which weights it exports: named, pure policies.

* Evaluation points: every `--eval-steps`, each epoch boundary and the end. The loop evaluates
  there when the data has a validation split.
* Save every `--save-steps` (0: at every evaluation point, so a run without validation data
  still leaves checkpoints to resume from), at the end, and whenever an evaluation finds a new
  best: the best weights must survive as a checkpoint, to be exported.
* Export (`--export best`, the default, as `load_best_model_at_end=True`): the checkpoint with
  the lowest eval loss; `last`, or a run without evaluation: the final weights. The step 0
  evaluation scores the starting model: it is logged but never "best".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class EvalPolicy:
    every: int  # --eval-steps; 0: only per epoch and at the end

    def due(self, step: int, *, new_epoch: bool, at_end: bool) -> bool:
        return at_end or new_epoch or bool(self.every and step % self.every == 0)


@dataclass(frozen=True, kw_only=True)
class SavePolicy:
    every: int  # --save-steps; 0: at every evaluation point

    def due(self, step: int, *, eval_point: bool, new_best: bool, at_end: bool) -> bool:
        periodic = step % self.every == 0 if self.every else eval_point
        return at_end or new_best or periodic


@dataclass
class BestModel:
    """The lowest eval loss seen after training began, and its step."""

    loss: float | None = None
    step: int | None = None

    def update(self, step: int, loss: float) -> bool:
        """Record an evaluation; True when it is a new best."""
        if step == 0 or (self.loss is not None and loss >= self.loss):
            return False
        self.loss, self.step = loss, step
        return True


@dataclass(frozen=True, kw_only=True)
class Export:
    """Which weights RUN/model holds (written to RUN/model/trainer_export.json)."""

    step: int
    eval_loss: float | None
    chosen: str  # "best eval loss" or "last step"


def choose_export(
    export: str, best: BestModel, last_step: int, last_eval_loss: float | None
) -> Export:
    if export == "best" and best.step is not None and best.loss is not None:
        return Export(step=best.step, eval_loss=best.loss, chosen="best eval loss")
    return Export(step=last_step, eval_loss=last_eval_loss, chosen="last step")
