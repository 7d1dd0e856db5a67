#!/usr/bin/env bash
# Create the virtual environment .venv from requirements.txt, once; later calls reuse it and
# reinstall only when requirements.txt changes. With --dev (scripts/test.sh) it also installs
# requirements-dev.txt (the pinned CI tools: import-linter, ruff), again only when that changes.
#   PYTHON=python3.11 bash scripts/setup_env.sh     # choose the interpreter (3.10+)
#   TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu bash scripts/setup_env.sh
#                                                   # e.g. the small CPU-only torch build
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
files=(requirements.txt)
if [ "${1:-}" = "--dev" ]; then
  files+=(requirements-dev.txt)
fi
for file in "${files[@]}"; do
  stamp=.venv/.${file%.txt}.sha256   # .venv/.requirements.sha256, .venv/.requirements-dev.sha256
  want=$(sha256sum "$file" | cut -d' ' -f1)
  if [ -x .venv/bin/python ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    continue
  fi
  if [ ! -x .venv/bin/python ]; then
    echo "setting up .venv from requirements.txt (once; a few minutes)" >&2
    "$PYTHON" -m venv .venv
    if [ -n "${TORCH_INDEX_URL:-}" ]; then
      .venv/bin/python -m pip install --quiet torch torchvision --index-url "$TORCH_INDEX_URL"
    fi
  else
    echo "installing $file into .venv (new or changed since the last install)" >&2
  fi
  .venv/bin/python -m pip install --quiet -r "$file"
  echo "$want" > "$stamp"
done
