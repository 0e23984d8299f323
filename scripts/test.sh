#!/usr/bin/env bash
# Set up (venv, pinned packages, the op's kernels, Debian's chromium for the browser test) and
# run every test. Safe to re-run: each step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if ! command -v chromium >/dev/null; then
  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"   # the nvcc on PATH is a shim; see ops/README
exec .venv/bin/python -m pytest -q "$@"
