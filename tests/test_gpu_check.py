"""bench/gpu_check.sh's CPU dry run: every part of the GPU check runs to the end at tiny sizes.

The GPU machine a task may be lent runs the script once, in a call of limited time; this test is
how the script itself is known to work before any GPU time is spent on it. Slow (about two
minutes on 2 cores): ``bash scripts/test.sh -m slow tests/test_gpu_check.py``.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.runs import ROOT

PARTS = [
    "make_data", "make_ijb", "tests_cuda", "train_none", "learned_none", "train_step_r100", "train_step_r50",
    "data", "verification", "ijb", "extract", "train_step_r100_compiled",
]


@pytest.mark.slow
def test_gpu_check_dry_run(tmp_path):
    out, work = tmp_path / "out", tmp_path / "work"
    env = {**os.environ, "DRY_RUN": "1", "OUT": str(out), "WORK": str(work), "PY": sys.executable,
           "BUDGET_S": "600"}
    done = subprocess.run(["bash", "bench/gpu_check.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    summary = (out / "summary.txt").read_text()
    for part in PARTS:
        assert f"== {part}: " in summary, f"part {part} did not run:\n{summary}"
    lines = summary.splitlines()
    results = [lines[i + 1] for i, line in enumerate(lines) if line.startswith("== ") and "skipped" not in line]
    assert all(r.strip().startswith("rc 0 ") for r in results), summary
    assert "train_bf16_2proc: skipped" in summary  # no second GPU
    assert "learned: " in summary or "did not learn: " in summary  # the verdict of the training check
    assert "peak GPU memory: - (CUDA not used)" in summary
    # what comes back from the device machine: the summary, every part's output, the training log
    assert sorted(p.name for p in out.iterdir()) == ["parts.txt", "summary.txt", "train_none.log"]
    assert "===== train_step_r100 (rc 0)" in (out / "parts.txt").read_text()
