#!/usr/bin/env bash
# Run the test suite (the fast tests; `bash scripts/test.sh -m slow` runs the end-to-end ones).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh --dev   # also the pinned CI tools of requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
