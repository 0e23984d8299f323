#!/usr/bin/env bash
# Create .venv, install the pinned requirements (torch 2.14.1 / torchvision 0.29.1 from this
# machine's disk), and build the op's C++ (and, with a CUDA toolkit and GPU, CUDA) kernels.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -r requirements.txt
if [ "${1:-}" = "--dev" ]; then
  .venv/bin/pip install -q --disable-pip-version-check -r requirements-dev.txt
fi
.venv/bin/python -m ops
