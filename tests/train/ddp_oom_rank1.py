"""Run under torchrun by test_distributed.py: `pipeline train` where only rank 1 runs out of
CUDA memory above 2 blocks per forward pass, and the micro-batch search is on (as on a GPU).
All ranks must agree on one size without a hang: a rank alone in an all-reduce would wait."""

from __future__ import annotations

import os
import sys

import torch

from pipeline.train import loop
from pipeline.train.models import MaskedLMObjective
from pipeline.train.step import TrainStep

RANK = int(os.environ["RANK"])
forward = MaskedLMObjective.forward


def small_gpu_on_rank_1(self: MaskedLMObjective, input_ids: torch.Tensor, *args, **kwargs):
    if self.training and RANK == 1 and input_ids.shape[0] > 2:
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
    return forward(self, input_ids, *args, **kwargs)


init = TrainStep.__init__


def searching(self: TrainStep, **kwargs) -> None:
    init(self, **{**kwargs, "automatic": True})  # the CPU skips the search: force it


MaskedLMObjective.forward = small_gpu_on_rank_1
TrainStep.__init__ = searching
sys.exit(loop.main(sys.argv[1:]))
