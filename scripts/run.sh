#!/usr/bin/env bash
# The main job on the embedded default (SQLite + local index): set up, seed the demo workflow
# (gallery, users, an authorised case, a reviewed search), then serve the API on loopback.
# Options are passed to `retroface serve` (e.g. --port 8080).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh "${RETROFACE_EXTRAS:-postgres}"
export RETROFACE_HOME="${RETROFACE_HOME:-$PWD/.retroface-demo}"
.venv/bin/retroface demo --home "$RETROFACE_HOME"
exec .venv/bin/retroface serve "$@"
