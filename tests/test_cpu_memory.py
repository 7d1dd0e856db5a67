"""utils/cpu_memory.py: freed large blocks stay in the heap (no page faults when they come back)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from runs import ROOT

# 5 allocations of 50 MB, each filled and freed, after one to warm up: the page faults they cost
CHILD = """
import resource, sys
import numpy as np
if sys.argv[1] == "keep":
    from utils.cpu_memory import keep_freed_memory
    assert keep_freed_memory() and keep_freed_memory()  # a second call is a no-op
x = np.ones(50 << 20, np.uint8); del x
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    x = np.ones(50 << 20, np.uint8); del x
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run([sys.executable, "-c", CHILD, mode], cwd=ROOT, capture_output=True, text=True,
                         timeout=120, check=True)
    return int(out.stdout.strip())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc only")
def test_freed_blocks_are_reused_without_page_faults():
    plain, kept = _faults("plain"), _faults("keep")
    assert plain > 0  # glibc unmapped each block on free: every allocation faulted it in again
    assert kept * 10 < plain
