#!/usr/bin/env bash
# The main job on the embedded default (SQLite + local index): set up, then run the demo workflow.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "${RETROFACE_EXTRAS:-postgres}"
exec .venv/bin/retroface demo "$@"
