#!/usr/bin/env bash
# The one command that runs locally what CI runs: set-up, lint, type check, tests (CPU; GPU tests skip).
# On a GPU host:  python3 -m pytest -m gpu tests   (see README, "GPU tests")
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy
.venv/bin/python -m pytest tests "$@"
