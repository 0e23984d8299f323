#!/usr/bin/env bash
# Every op test (the CUDA cases included) and the op benchmark, on a machine with a GPU:
#
#   bench/run_cuda_checks.sh           # all tests, the op benchmark, R50 ours vs transformers, app.py
#   bench/run_cuda_checks.sh --quick   # skip the slow build tests; benchmark B = 1 only
#
# Exits non-zero if a kernel does not build or a test fails. Uses $PYTHON if set, else the
# repository's .venv/bin/python, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=0
[[ "${1:-}" == "--quick" ]] && quick=1
if [[ -n "${PYTHON:-}" ]]; then py=$PYTHON
elif [[ -x .venv/bin/python ]]; then py=.venv/bin/python
else py=python3; fi

# torch guesses CUDA_HOME from the nvcc on PATH, which may be a wrapper script; prefer the
# toolkit itself when CUDA_HOME is unset.
if [[ -z "${CUDA_HOME:-}" && -x /usr/local/cuda/bin/nvcc ]]; then export CUDA_HOME=/usr/local/cuda; fi
export DDETR_OPS_REQUIRE_CUDA_BUILD=1

"$py" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'no GPU visible to torch')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true

echo "== build (first run compiles the CPU and CUDA kernels)"
"$py" -m ops --strict

echo "== tests"
if (( quick )); then
  "$py" -m pytest tests/test_ops.py tests/test_ops_cuda_build.py -q -rs -m "not slow"
else
  "$py" -m pytest tests/test_ops.py tests/test_ops_cuda_build.py -q -rs
fi

echo "== benchmark"
if (( quick )); then
  "$py" bench/ms_deform_attn.py --device cuda --quick
else
  "$py" bench/ms_deform_attn.py --device cuda
fi

echo "== R50 800x1333 on the GPU: ours fp32 / ours bf16 / transformers fp32, same weights"
"$py" bench/r50_cpu.py --device cuda --repeats 5

echo "== app.py --device cuda (fp32, then bf16): the page is served and runs the model on the GPU"
"$py" bench/serve_check.py --device cuda
"$py" bench/serve_check.py --device cuda --precision bf16
