#!/usr/bin/env bash
# Every GPU check of this project in one call that fits a lent GPU machine (one device-tool run):
# the CUDA tests, training-step throughput (iresnet100 and iresnet50; fp32/bf16/fp16, NCHW and
# channels_last, compiled or not; ContraFace stage 2 and the single branch, each against the
# original-style step in the same run), short bf16 and fp16 training runs of both ContraFace
# stages that must learn, the data pipeline (CPU workers, GPU decoding), verification of the
# five sets and IJB extraction at iresnet100, GPU extraction, and the peak GPU memory of each.
#
#   OUT=/path/to/results bash bench/gpu_check.sh     # on a GPU machine: at most BUDGET_S (420 s)
#   DRY_RUN=1 bash bench/gpu_check.sh                 # on a CPU: the same parts at tiny sizes
#
# On the device tool's machine (python3 without easydict, no package index; see bench/README.md):
#   python3 -m pip download --no-deps --only-binary=:all: -d .whl easydict==1.14   # here, once
#   run(command="OUT=$OUT bash bench/gpu_check.sh", carry=[".whl"], timeout_s=540)
#
# Python: $PY, else .venv/bin/python, else python3; easydict (the one package such a machine
# lacks) is installed from carried wheels in .whl/ into a temporary folder when it is missing.
# Data, run folders and each part's log go to WORK (default /tmp/gpu_check), not OUT: what comes
# back is OUT/summary.txt (the machine, every part's command, exit code, time, peak GPU memory and
# result table), OUT/parts.txt (every part's whole output) and the training runs' logs. Each part
# has its own time limit and all of them share one deadline (BUDGET_S seconds from the start): a
# part that fails or runs out of time is recorded and the next one runs; a part that no longer
# fits is skipped and says so.
set -uo pipefail
cd "$(dirname "$0")/.."
START=$SECONDS
DRY_RUN=${DRY_RUN:-0}
BUDGET_S=${BUDGET_S:-420}
OUT=${OUT:-work_dirs/gpu_check-$(date +%Y%m%d-%H%M%S)}
WORK=${WORK:-/tmp/gpu_check}
rm -rf "$WORK/runs" "$WORK/logs"
mkdir -p "$OUT" "$WORK/data" "$WORK/runs" "$WORK/logs"
SUMMARY="$OUT/summary.txt"
PARTS="$OUT/parts.txt"
: > "$SUMMARY"
: > "$PARTS"
say() { echo "$*" | tee -a "$SUMMARY"; }

if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
if ! "$PY" -c "import easydict" 2> /dev/null; then
  if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target "$WORK/site" .whl/*.whl || exit 2
    export PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "gpu_check: $PY has no easydict and .whl/ holds no wheels (see the header of $0)" >&2
    exit 2
  fi
fi
export PYTHONUNBUFFERED=1
CORES=$(nproc)
WORKERS=$(( CORES > 16 ? 16 : CORES ))
NGPU=$("$PY" -c "import torch; print(torch.cuda.device_count())")

# Sizes: the real networks on a GPU; a tiny network and a few images for the CPU dry run. The dry
# run trains in fp32 (AMP is CUDA's), compiles nothing (inductor's CPU build takes minutes) and
# uses width 16, the narrowest that channels_last runs at on a CPU (training/step.py), and CPU
# rows for the extraction benchmark (its GPU rows are all it measures on a GPU).
if [ "$DRY_RUN" = 1 ]; then
  DATA_ARGS=(--num-ids 20 --images-per-id 10 --eval-ids 20 --pairs 40)
  IJB_SUBJECTS=6
  BIG=(--network iresnet18 --width 16) MID=(--network iresnet18 --width 16)
  BIG_BATCH=8 MID_BATCH=8 STEPS=2 WARMUP=1 COMPILE=no
  TRAIN_NET=(--set network=iresnet18 --set network_width=16 --set batch_size=16)
  AMPS=(none) DATA_IMAGES=64 DATA_WORKERS=1 EVAL_BATCH=32 REQUIRE=() EXTRACT=(--no-onnx)
else
  DATA_ARGS=(--num-ids 300 --images-per-id 40 --eval-ids 300 --pairs 3000)
  IJB_SUBJECTS=100
  BIG=(--network iresnet100 --width 64) MID=(--network iresnet50 --width 64)
  BIG_BATCH=128 MID_BATCH=256 STEPS=10 WARMUP=3 COMPILE=yes
  TRAIN_NET=(--set network=iresnet18 --set network_width=64 --set batch_size=128)
  AMPS=(bf16 fp16) DATA_IMAGES=2048 DATA_WORKERS="4,$WORKERS" EVAL_BATCH=256 REQUIRE=(--require)
  EXTRACT=(--no-cpu --no-onnx)
fi
DATA="$WORK/data/synthetic"
IJB="$WORK/data/ijb"
MEASURE=("$PY" bench/peak_memory.py)  # runs a script (or -m module) and prints its peak GPU memory

run() {  # run NAME LIMIT COMMAND...: one part under min(LIMIT, time left); its log in WORK/logs
  local name=$1 limit=$2
  shift 2
  local left=$(( BUDGET_S - (SECONDS - START) ))
  if [ "$left" -lt 20 ]; then
    say "== $name: skipped, ${left} s of the ${BUDGET_S} s budget left"
    return
  fi
  [ "$limit" -gt "$left" ] && limit=$left
  local log="$WORK/logs/$name.txt" begin=$SECONDS
  say "== $name: $*"
  timeout --signal=INT --kill-after=10 "$limit" "$@" > "$log" 2>&1
  local rc=$?
  say "   rc $rc after $((SECONDS - begin)) s (limit $limit s)$([ $rc = 124 ] && echo ', OUT OF TIME')"
  # the result: bench tables end their output; keep the lines that carry figures
  grep -v "it/s\]\|s/it\]\|%|" "$log" | grep -v "^\s*$" | tail -n "${TAIL:-25}" | sed 's/^/   | /' >> "$SUMMARY"
  { echo "===== $name (rc $rc): $*"; cat "$log"; } >> "$PARTS"
}

say "gpu_check $(git rev-parse --short HEAD 2> /dev/null || echo '?'), $(date -u '+%Y-%m-%d %H:%M UTC'), DRY_RUN=$DRY_RUN, budget $BUDGET_S s"
say "machine: $("$PY" -c "from bench.machine import describe_machine; print(describe_machine())")"
if command -v nvidia-smi > /dev/null; then
  say "$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)"
fi

# --- data (regenerated only when missing: the generator is deterministic) ---------------------
[ -f "$DATA/cplfw.bin" ] || run make_data 60 "$PY" -m tools.make_synthetic --output "$DATA" "${DATA_ARGS[@]}" \
  --workers "$WORKERS" --no-progress --force
[ -d "$IJB/IJBC" ] || run make_ijb 60 "$PY" -m tools.make_synthetic_ijb --output "$IJB" --subjects "$IJB_SUBJECTS" --force

# --- the CUDA tests (skipped on a CPU) ----------------------------------------------------------
TAIL=4 run tests_cuda 60 "${MEASURE[@]}" -m pytest -q -p no:cacheprovider tests/test_loader.py

# --- short training runs: ContraFace, stage 1 then stage 2, must learn -------------------------
TRAIN=(--dataset synthetic --set "rec=$DATA" "${TRAIN_NET[@]}" --set num_epoch=2 --set "shrink_epoch=[2]"
       --set "val_targets=['lfw']" --set eval_batch_size="$EVAL_BATCH" --set num_workers="$WORKERS"
       --set channels_last=True --set frequent=10)
for amp in "${AMPS[@]}"; do
  TAIL=6 run "train_$amp" 90 "${MEASURE[@]}" train.py "${TRAIN[@]}" --set amp="$amp" --set "output=$WORK/runs/train_$amp"
  TAIL=2 run "learned_$amp" 20 "$PY" bench/check_training.py "$WORK/runs/train_$amp/training.log" "${REQUIRE[@]}"
  cp "$WORK/runs/train_$amp/training.log" "$OUT/train_$amp.log" 2> /dev/null
done
if [ "$NGPU" -ge 2 ]; then
  run train_bf16_2proc 120 "$PY" -m torch.distributed.run --nproc_per_node=2 train.py "${TRAIN[@]}" \
    --set amp=bf16 --set "output=$WORK/runs/train_bf16_2proc"
else
  say "== train_bf16_2proc: skipped, $NGPU GPU (NCCL needs one GPU per process)"
fi

# --- throughput: ours vs the original-style step, in the same run ------------------------------
run train_step_r100 120 "$PY" bench/bench_train_step.py "${BIG[@]}" --batch-size "$BIG_BATCH" \
  --methods single,contraface --precisions fp32,bf16,fp16 --layouts nchw,channels_last --compile no \
  --steps "$STEPS" --warmup "$WARMUP"
run train_step_r50 60 "$PY" bench/bench_train_step.py "${MID[@]}" --batch-size "$MID_BATCH" \
  --methods single,contraface --precisions bf16 --layouts channels_last --compile no --steps "$STEPS" --warmup "$WARMUP"
run data 45 "$PY" bench/bench_data.py --data "$DATA" --images "$DATA_IMAGES" --workers "$DATA_WORKERS" \
  --repeat 2 --gpu-decode
run verification 45 "${MEASURE[@]}" bench/bench_verification.py --repeat 1 --data "$DATA" "${BIG[@]}" \
  --batch-size "$EVAL_BATCH"
run ijb 40 "${MEASURE[@]}" bench/bench_ijb.py --data-root "$IJB" "${BIG[@]}" --batch-size "$EVAL_BATCH" \
  --workers "$WORKERS" --repeat 1
run extract 30 "${MEASURE[@]}" bench/bench_extract.py "${BIG[@]}" --batch-size 32 --gpu-batch-size "$EVAL_BATCH" \
  --seconds 2 "${EXTRACT[@]}"
# last: compiling iresnet100 takes the longest and is the least predictable
run train_step_r100_compiled 100 "$PY" bench/bench_train_step.py "${BIG[@]}" --batch-size "$BIG_BATCH" \
  --methods contraface --precisions bf16 --layouts channels_last --compile "$COMPILE" --steps "$STEPS" --warmup "$WARMUP"

say "done in $((SECONDS - START)) s; results: $SUMMARY, $PARTS"
