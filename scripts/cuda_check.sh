#!/usr/bin/env bash
# GPU checks in one run, for a machine that already has PyTorch with CUDA (no install step):
#  1. the environment and the CUDA tests;
#  2. one table of execution modes (scripts/step_modes.py): eager, torch.compile, bf16 autocast and
#     CUDA graphs (torch.compile mode="reduce-overhead") for SortFlow and PermuteFlow (training step,
#     paper configs), the set codec's and IDF's networks (batched forward pass) and one image flow
#     training step each of the baseline and MaxPoolFlow CIFAR-10 configs -> LOG/modes.md;
#  3. the SortFlow / PermuteFlow throughput bench (eager and fused), the side-by-side bench against the
#     official SurVAE code (when SURVAE_OFFICIAL names a checkout), and the codec benches (CPU coders).
# Every step has its own time limit; a failed or timed-out step is logged and the rest still run.
#
#   bash scripts/cuda_check.sh [LOG_DIR]          # logs: LOG_DIR/*.log, the mode table LOG_DIR/modes.md
#   QUICK=1 bash scripts/cuda_check.sh            # fewer timed steps per mode
set -u
LOG=${1:-${OUT:-runs/cuda_check}}
mkdir -p "$LOG"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
DEVICE=${DEVICE:-cuda}
STEPS=10
[ -n "${QUICK:-}" ] && STEPS=3

step() {  # step NAME SECONDS CMD...
  local name=$1 secs=$2
  shift 2
  echo "== $name: $*"
  local t0=$SECONDS
  timeout "$secs" "$@" >"$LOG/$name.log" 2>&1
  local rc=$?
  echo "== $name: rc=$rc in $((SECONDS - t0)) s"
  tail -n 25 "$LOG/$name.log"
  return 0
}

step env 60 bash -c "nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv; \
  $PY -c 'import torch; print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(0), \
  torch.cuda.get_device_properties(0).multi_processor_count, \"SMs\")'"
step tests 180 "$PY" -m pytest -q -m cuda -p no:cacheprovider tests/test_cuda.py tests/test_surjections.py

# config:batch of each model in the mode table
MODELS="spatial_mnist/sortflow.yaml:128 spatial_mnist/permuteflow.yaml:128 set_codec/spatial_mnist_cpu.yaml:256
  images/idf_cifar10.yaml:64 images/baseline_cifar10.yaml:32 images/maxpool_cifar10.yaml:32"
TABLE="$LOG/modes.md"
"$PY" -c 'import sys; sys.path.insert(0, "scripts"); import step_modes; print(step_modes.HEADER)' >"$TABLE"
for entry in $MODELS; do
  cfg=configs/${entry%%:*} batch=${entry##*:}
  for mode in eager compile bf16 graphs; do
    name="mode_$(basename "${cfg%.yaml}")_$mode"
    step "$name" 240 "$PY" scripts/step_modes.py "$cfg" --mode "$mode" --device "$DEVICE" --batch "$batch" \
      --steps "$STEPS" --warmup 3 --table "$TABLE"
    grep -q "^| $(basename "${cfg%.yaml}") | $mode |" "$TABLE" || \
      echo "| $(basename "${cfg%.yaml}") | $mode | $DEVICE | $batch | - | - | no result (timeout or crash: $name.log) |" >>"$TABLE"
  done
done

step bench_eager 180 "$PY" scripts/bench_setflow.py --device "$DEVICE" --repeats 5 --no-fused
step bench_fused 240 "$PY" scripts/bench_setflow.py --device "$DEVICE" --repeats 5 --fused
step bench_official 300 "$PY" scripts/bench_official.py --device "$DEVICE" --rounds 5 --steps 5
step bench_set_codec 240 "$PY" scripts/bench_set_codecs.py --speed --sets 512 --rounds 3
step bench_idf_codec 240 "$PY" scripts/bench_codecs.py --speed --random-model configs/images/idf_fashion_mnist_cpu.yaml \
  --n 256 --runs 3

echo
echo "== execution modes ($TABLE)"
cat "$TABLE"
