#!/usr/bin/env bash
# GPU measurements of this bundle in one call (docs/performance.md, "GPU"):
#   bash benchmarks/gpu.sh [extra benchmarks.gpu options]
# Installs the wheels carried in .whl/ (packages the GPU machine lacks) on top of its torch, prints the
# device, torch and CUDA versions, runs `python -m benchmarks.gpu` and writes gpu_benchmark.json and the
# log under $OUT (default: ./gpu_out). On a machine that has the requirements, .whl/ may be absent.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu_out}"
mkdir -p "$OUT"
PYTHON="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" > /dev/null; then
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
"$PYTHON" - <<'PY' 2>&1 | tee "$OUT/environment.txt"
import torch
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version())
print("device", torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no CUDA device")
PY
"$PYTHON" -m benchmarks.gpu --output_dir "$OUT" "$@" 2>&1 | tee "$OUT/gpu_benchmark.log"
