#!/usr/bin/env bash
# The README's first command: set up, then run the main job on its embedded default
# (a sample corpus built from the standard library's docstrings, a WordPiece tokenizer trained
# on it, `pipeline run` with its default executor (forked worker processes), the inspect summary,
# and a short training run).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh train
exec .venv/bin/pipeline demo "$@"
