#!/usr/bin/env bash
# Create .venv (once) and install the project with its dev extras. Idempotent.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch is pinned in pyproject (CPU build on a CPU machine); install it first so that no
# other requirement can pull a CUDA build.
.venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0"
.venv/bin/pip install -q --disable-pip-version-check -e ".[dev]"
