#!/usr/bin/env bash
# Every GPU check of this project in one run: the CUDA tests, the benchmarks' GPU rows and short
# bf16 / fp16 training runs (one GPU, and two processes where there are two GPUs).
#
#   OUT=/path/to/results bash bench/gpu_check.sh          # default OUT: work_dirs/gpu_check-<time>
#   QUICK=1 bash bench/gpu_check.sh                       # fewer steps and rows (about 6 minutes)
#
# Each part runs under its own time limit and writes OUT/<part>.txt; a part that fails or runs
# out of time is recorded in OUT/summary.txt and the next part runs. About 10 minutes on one
# H100/H200 once .venv exists (synthetic data is generated into OUT/data first).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-work_dirs/gpu_check-$(date +%Y%m%d-%H%M%S)}
PY=${PY:-.venv/bin/python}
QUICK=${QUICK:-0}
mkdir -p "$OUT/data"
SUMMARY="$OUT/summary.txt"
: > "$SUMMARY"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
WORKERS=$(( $(nproc) > 16 ? 16 : $(nproc) ))

run() {  # run NAME SECONDS COMMAND...: one part, its output in OUT/NAME.txt
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "== $name: $*" | tee -a "$SUMMARY"
  timeout --signal=INT "$limit" "$@" > "$OUT/$name.txt" 2>&1
  local rc=$?
  echo "   rc $rc after $((SECONDS - start)) s (limit $limit s)" | tee -a "$SUMMARY"
  tail -n 25 "$OUT/$name.txt"
}

$PY -c "from bench.machine import describe_machine; print(describe_machine())" | tee -a "$SUMMARY"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee -a "$SUMMARY"

# --- data ----------------------------------------------------------------------------------
run make_data 180 $PY -m tools.make_synthetic --output "$OUT/data/synthetic" --num-ids 300 \
  --images-per-id 40 --eval-ids 300 --pairs 6000 --workers "$WORKERS" --no-progress --force
run make_ijb 120 $PY -m tools.make_synthetic_ijb --output "$OUT/data/ijb" --subjects 100 --force

# --- tests that need CUDA (skipped on CPU machines) -----------------------------------------
run tests_cuda 240 $PY -m pytest -q -x tests/test_dataset.py tests/test_evaluation.py tests/test_verification.py \
  -k "cuda or CUDA or gpu or device"

# --- benchmarks ----------------------------------------------------------------------------
STEPS=$([ "$QUICK" = 1 ] && echo 10 || echo 30)
run train_step_r100 420 $PY bench/bench_train_step.py --network iresnet100 --width 64 --batch-size 128 \
  --precisions fp32,bf16,fp16 --layouts nchw,channels_last --compile no --steps "$STEPS" --warmup 5
run train_step_r100_compiled 300 $PY bench/bench_train_step.py --network iresnet100 --width 64 \
  --batch-size 128 --methods contraface --precisions bf16 --layouts channels_last --compile yes \
  --steps "$STEPS" --warmup 5
run train_step_r50 240 $PY bench/bench_train_step.py --network iresnet50 --width 64 --batch-size 256 \
  --methods single,contraface --precisions bf16 --layouts channels_last --compile no --steps "$STEPS" --warmup 5
run data 180 $PY bench/bench_data.py --data "$OUT/data/synthetic" --workers "1,4,$WORKERS" --gpu-decode
run verification 240 $PY bench/bench_verification.py --repeat 1 --data "$OUT/data/synthetic" \
  --network iresnet100 --batch-size 256
run ijb 240 $PY bench/bench_ijb.py --data-root "$OUT/data/ijb" --network iresnet100 --width 64 \
  --batch-size 256 --workers "$WORKERS" --repeat 1
run extract 180 $PY bench/bench_extract.py --network iresnet100 --batch-size 32 --gpu-batch-size 256 \
  --seconds 5 --no-cpu

# --- short training runs: bf16 and fp16 (+ channels_last, compile off), ContraFace both stages --
TRAIN=(--dataset synthetic --set "rec=$OUT/data/synthetic" --set network=iresnet18 --set network_width=64
       --set batch_size=128 --set num_epoch=2 --set "shrink_epoch=[2]" --set "val_targets=['lfw']"
       --set num_workers="$WORKERS" --set channels_last=True)
run train_bf16 420 $PY train.py "${TRAIN[@]}" --set amp=bf16 --set "output=$OUT/train_bf16"
run train_fp16 420 $PY train.py "${TRAIN[@]}" --set amp=fp16 --set "output=$OUT/train_fp16"
if [ "$NGPU" -ge 2 ]; then
  run train_bf16_2proc 420 $PY -m torch.distributed.run --nproc_per_node=2 train.py "${TRAIN[@]}" \
    --set amp=bf16 --set "output=$OUT/train_bf16_2proc"
else
  echo "== train_bf16_2proc: skipped, $NGPU GPU (NCCL needs one GPU per process)" | tee -a "$SUMMARY"
fi
grep -h "lfw" "$OUT"/train_*/training.log 2>/dev/null | tail -n 6 | tee -a "$SUMMARY"
echo "results in $OUT"
