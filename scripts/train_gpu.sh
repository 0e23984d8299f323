#!/usr/bin/env bash
# One slice of the default model's training on a rented GPU machine (python3 with torch there).
# Usage: scripts/train_gpu.sh RUN_DIR MINUTES [extra ddetr.train args]
# RUN_DIR may hold checkpoint.pt from the previous slice (training resumes from it); the
# data is regenerated each slice from its seed (byte-identical), so nothing else travels.
set -euo pipefail
RUN=$1; MIN=$2; shift 2
export PYTHONUNBUFFERED=1 OMP_NUM_THREADS=4
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
export TORCH_CUDA_ARCH_LIST="9.0"
python3 -m ops
[ -f /tmp/synth/annotations/instances_val2017.json ] || \
  python3 -m ddetr.data.synthetic --out /tmp/synth --train 24000 --val 500 --seed 1 --workers 16
mkdir -p "$RUN"
python3 -m ddetr.train --coco-dir /tmp/synth --preset small --out "$RUN" --resume auto \
  --max-minutes "$MIN" --device cuda --amp --workers 12 "$@"
