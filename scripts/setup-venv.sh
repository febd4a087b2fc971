#!/usr/bin/env bash
# Creates .venv and installs the project with the given extras, on a fresh machine.
# torch goes in first, pinned: an unpinned torch (pulled in by the `train` extra) would resolve
# to a 5 GB CUDA build; torch==2.13.0 is a 190 MB CPU build on these machines.
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-train}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[${extras}]"
