#!/usr/bin/env bash
# Set up and run the checks CI runs: lint, types, and the test suite (slow suites excluded;
# run them with `scripts/test.sh -m slow`). Tests read ../shared/data (or RETROFACE_TEST_DATA)
# and use PostgreSQL on 127.0.0.1:5432 and Redis on 127.0.0.1:6379.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh dev,dlib,fused
bash scripts/setup-browser.sh
.venv/bin/ruff check src tests bench
.venv/bin/ruff format --check src tests bench
.venv/bin/mypy
if [ "$#" -eq 0 ]; then
  set -- -m "not slow"
fi
exec .venv/bin/pytest "$@"
