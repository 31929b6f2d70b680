#!/usr/bin/env bash
# The GPU checks of mempool.cupy, as one short script for a machine with a CUDA GPU
# (the device tool's machines: no network there, so CuPy travels as wheels; see
# /work/.library/device/README.md).  Runs the CuPy tests, then the CuPy bench.
#   here:   pip download --no-deps -d .whl cupy-cuda12x cuda-pathfinder  (then carry .whl)
#   there:  bash bench/gpu_check.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
python3 -m pip install -q --no-build-isolation . 2>/dev/null || python3 -m pip install -q .
nvidia-smi --query-gpu=name,memory.total --format=csv
python3 -m pytest -q -p no:cacheprovider tests/test_cupy.py
python3 bench/cupy_pool.py
