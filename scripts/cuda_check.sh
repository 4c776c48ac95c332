#!/usr/bin/env bash
# GPU checks in one run: the CUDA tests, then the SortFlow / PermuteFlow throughput benchmark
# (eager ops and the fused compiled blocks). Meant for a machine that already has PyTorch with
# CUDA (no install step); each part has its own time limit and a failure does not stop the rest.
#
#   bash scripts/cuda_check.sh [LOG_DIR]     # logs: LOG_DIR/{env,tests,bench_eager,bench_fused}.log
set -u
LOG=${1:-${OUT:-runs/cuda_check}}
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 25 "$LOG/$name.log"
}

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
  torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")'"
step tests 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_surjections.py
step bench_eager 120 "$PY" scripts/bench_setflow.py --device cuda --repeats 5 --no-fused
step bench_fused 210 "$PY" scripts/bench_setflow.py --device cuda --repeats 5 --fused
