#!/usr/bin/env bash
# The whole pipeline on a CPU in minutes: environment (once), synthetic data (once), ContraFace
# training, then verification on the five synthetic sets against an untrained network, and the
# training curves (curves.png in the run folder).
#   bash scripts/quickstart.sh                        # data in data/synthetic, run in work_dirs/
#   DATA=/tmp/faces bash scripts/quickstart.sh        # elsewhere
#   bash scripts/quickstart.sh --set num_epoch=6      # extra train.py arguments
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
PY=.venv/bin/python
DATA=${DATA:-data/synthetic}
OUT=work_dirs/quickstart-$(date +%Y%m%d-%H%M%S)
start=$SECONDS

if [ ! -f "$DATA/train.rec" ]; then
  "$PY" -m tools.make_synthetic --output "$DATA" --num-ids 300 --images-per-id 40 --eval-ids 300 --pairs 1200
fi

# ContraFace with a CosFace head: from scratch, the tiny network learns faster under CosFace's
# margin than under ArcFace's (in our trials, synthetic lfw 93% vs 90% after the same 3 epochs).
# Scoring lfw alone after every epoch keeps the log informative and cheap; all five sets are
# scored at the end.
"$PY" train.py --dataset synthetic --set rec="$DATA" --set output="$OUT" \
  --set head=cosface --set m=0.35 --set "val_targets=['lfw']" --set eval_batch_size=64 "$@"

echo "verification of $OUT/backbone.pth (10-fold accuracy, flip-sum embeddings):"
"$PY" bench/synthetic_learnability.py --data "$DATA" --checkpoint "$OUT/backbone.pth" \
  --untrained-on lfw | tee "$OUT/verification.txt"
"$PY" -m tools.plot_log "$OUT/training.log" --output "$OUT/curves.png"   # loss, margin, LR, speed, lfw
echo "quickstart done in $((SECONDS - start)) s: $OUT"
