#!/usr/bin/env bash
# On a lent GPU machine (no network; Python 3.12 with CUDA torch and triton): install the
# wheels that bench/gpu_wheels.sh put in .whl/ (carried with the call), then run the command.
#   bash bench/gpu_run.sh make gpu-check GPU_PYTHON=python3
#   bash bench/gpu_run.sh python3 bench/train_throughput.py
set -euo pipefail
cd "$(dirname "$0")/.."
ls .whl/*.whl >/dev/null 2>&1 || { echo "gpu_run: no wheels in .whl/; run bench/gpu_wheels.sh" \
  "here and carry .whl with the call" >&2; exit 2; }
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl
export PYTHONPATH=/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}
export DS_BUILD_OPS=0 TORCH_EXTENSIONS_DIR=/tmp/torch_extensions PYTHONUNBUFFERED=1
"$@"
