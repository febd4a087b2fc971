"""A thin PyTorch masked-LM trainer over the pipeline's shards (`pipeline train`).

Modules, in data-flow order: dataset (shards -> blocks, no torch), sampler (pure: which blocks,
in which order, on which rank), masking (pure numpy masking + the torch collator), models
(load/build a model, the objective, the optimizer, the schedule), checkpoint, runtime (devices,
precision, DDP, evaluation, metrics, export), data_checks (what is checked before training),
step (one optimizer step in micro-batches that fit), policies (when to evaluate and save, the
best model), session (everything built before the loop), config (flags) and loop (the training
loop). Importing this package imports no torch; `loop`, `models`, `checkpoint`, `runtime`,
`step` and `session` do.
"""
