#!/usr/bin/env bash
# Set up (if needed) and run the main job: the built-in default sweep.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/fanova-gpu run "$@"
