#!/usr/bin/env bash
# The GPU checks in one command (see benchmarks/gpu_check.py): bash benchmarks/gpu_check.sh [--dry-run] [--work DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
exec "$PY" benchmarks/gpu_check.py "$@"
