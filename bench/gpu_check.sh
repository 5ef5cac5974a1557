#!/usr/bin/env bash
# The GPU checks in one go, for a CUDA machine with sgagent, its test deps and flashinfer installed:
#   bash bench/gpu_check.sh [OUT_DIR] [SECONDS]
# Each step gets a time limit within the overall budget (default 540 s); full logs go to OUT_DIR, the
# last lines of each to stdout. flashinfer builds its kernels on first use (~20 s), in the first step.
set -u
cd "$(dirname "$0")/.."
OUT=${1:-bench/out/gpu}; BUDGET=${2:-540}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
T0=$(date +%s)
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
python -c "import torch, flashinfer; print('torch', torch.__version__, 'flashinfer', flashinfer.__version__)"

step() {  # step NAME LIMIT TAIL_LINES CMD...
  local name=$1 lim=$2 tailn=$3; shift 3
  local el=$(( $(date +%s) - T0 )) rem
  rem=$(( BUDGET - el )); (( rem < lim )) && lim=$rem
  if (( lim < 10 )); then echo "=== $name skipped: budget spent"; return; fi
  echo "=== $name (limit ${lim}s, at ${el}s)"
  timeout "$lim" "$@" > "$OUT/$name.log" 2>&1
  echo "=== $name rc=$? in $(( $(date +%s) - T0 - el ))s"
  grep -v "\[info \|\[debug\|Converting\|Loading weights" "$OUT/$name.log" | tail -"$tailn"
}

step tests_flashinfer 150 3 python -m pytest -q -p no:cacheprovider tests/test_flashinfer.py
step throughput 150 4 python -m bench.engine_throughput --runs 3
step scaling 80 12 python -m bench.batch_scaling --runs 3
step radix 90 8 python -m bench.radix_reuse --runs 3
step tests_cuda 200 4 python -m pytest -q -p no:cacheprovider tests/test_engine_correctness.py tests/test_engine_behaviour.py
