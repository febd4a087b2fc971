#!/usr/bin/env bash
# The README's second command (and what CI runs): set up, lint, then the whole test suite.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh "train,dev"
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/lint-imports --no-cache
.venv/bin/hadolint docker/Dockerfile
.venv/bin/python tests/bench/bench_pipeline.py --quick
.venv/bin/python tests/bench/bench_datapath.py --quick
.venv/bin/python tests/bench/bench_gpu.py --quick
.venv/bin/python tests/bench/bench_reader.py --quick
exec .venv/bin/python -m pytest "$@"
