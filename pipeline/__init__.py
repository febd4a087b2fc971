"""Offline tokenize-and-pack pipeline for masked-language-model training.

The packages follow the data flow, and each imports only those before it:
  core/      pure numpy: packing, split, ledger, histograms (imports nothing of the package)
  format/    the on-disk contract: run paths, storage, shards, sidecars and the manifest
  ingest/    inputs -> documents -> token ids: units, sources, readers, tokenization
  run/       `pipeline run`: one work unit (process), stitching, the output folder, runners
  commands/  the CLI, `inspect`, `verify`, `demo`
  train/     the MLM trainer (the only torch user) and its dataset cache
The direction is enforced by import-linter contracts in pyproject.toml.
"""

__version__ = "0.1.0"
FORMAT_VERSION = 1
