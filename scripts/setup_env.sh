#!/usr/bin/env bash
# Create the virtual environment .venv from requirements.txt, once; later calls reuse it and
# reinstall only when requirements.txt changes.
#   PYTHON=python3.11 bash scripts/setup_env.sh     # choose the interpreter (3.10+)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup_env.sh
#                                                   # e.g. the small CPU-only torch build
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STAMP=.venv/.requirements.sha256
want=$(sha256sum requirements.txt | cut -d' ' -f1)
if [ -x .venv/bin/python ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  exit 0
fi
echo "setting up .venv from requirements.txt (once; a few minutes)" >&2
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  .venv/bin/python -m pip install --quiet torch torchvision --index-url "$TORCH_INDEX_URL"
fi
.venv/bin/python -m pip install --quiet -r requirements.txt
echo "$want" > "$STAMP"
