"""A thin PyTorch masked-LM trainer over the pipeline's shards (`pipeline train`).

Modules, in data-flow order: dataset (shards -> blocks, no torch), sampler (pure: which blocks,
in which order, on which rank), masking (pure numpy masking + the torch collator), models
(load/build a model, the objective, the optimizer), checkpoint, runtime (devices, DDP,
evaluation, metrics), config (flags) and loop (the training loop). Importing this package
imports no torch; `loop`, `models`, `checkpoint` and `runtime` do.
"""
