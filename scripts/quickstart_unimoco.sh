#!/usr/bin/env bash
# FaceCL's UniMoCo on a CPU in minutes: environment (once), synthetic data (once, shared with
# scripts/quickstart.sh), UniMoCo training with configs/synthetic_unimoco_cpu.py, then the query
# encoder on the five synthetic verification sets against the same network untrained.
#   bash scripts/quickstart_unimoco.sh                       # data in data/synthetic, run in work_dirs/
#   DATA=/tmp/faces bash scripts/quickstart_unimoco.sh       # elsewhere
#   bash scripts/quickstart_unimoco.sh --set num_epoch=4     # extra train_unimoco.py arguments
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DATA=${DATA:-data/synthetic}
OUT=work_dirs/quickstart-unimoco-$(date +%Y%m%d-%H%M%S)
start=$SECONDS

if [ ! -f "$DATA/train.rec" ]; then
  "$PY" -m tools.make_synthetic --output "$DATA" --num-ids 300 --images-per-id 40 --eval-ids 300 --pairs 1200
fi

# lfw alone after every epoch keeps the log informative and cheap; all five sets at the end
"$PY" train_unimoco.py configs/synthetic_unimoco_cpu --set rec="$DATA" --set output="$OUT" \
  --set "val_targets=['lfw']" "$@"

# lfw only, to stay inside 10 minutes on a 2-core CPU; all five sets: drop --bins lfw
echo "verification of the query encoder $OUT/backbone.pth (10-fold accuracy, flip-sum embeddings):"
"$PY" bench/synthetic_learnability.py --data "$DATA" --checkpoint "$OUT/backbone.pth" \
  --bins lfw --untrained-on lfw | tee "$OUT/verification.txt"
echo "quickstart_unimoco done in $((SECONDS - start)) s: $OUT"
