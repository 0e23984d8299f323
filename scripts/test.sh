#!/usr/bin/env bash
# Set up (venv, pinned packages, the op's kernels, Debian's chromium for the browser test) and
# run every test. Safe to re-run: each step skips what is already done.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
if ! command -v chromium >/dev/null; then
  (apt-get install -y -q chromium || (apt-get update -q && apt-get install -y -q chromium)) >/dev/null
fi
export CUDA_HOME="${CUDA_HOME:-/usr/local/cuda}"   # the nvcc on PATH is a shim; see ops/README.md
export DDETR_OPS_REQUIRE_CUDA_BUILD=1                # CI must prove the CUDA sources compile (sm_80, sm_90)
exec .venv/bin/python -m pytest -q "$@"
