"""Run a Python script or module and print its peak GPU memory when it ends.

    python bench/peak_memory.py train.py --dataset synthetic --set amp=bf16
    python bench/peak_memory.py -m eval.evaluation --weights backbone.pth --data-dir data/faces_emore

bench/gpu_check.sh runs its parts through this, so that every part reports the memory it needed:
``torch.cuda.max_memory_allocated`` (tensors) and ``max_memory_reserved`` (the caching
allocator's total) of this process's current device. DataLoader workers and other child processes
are not counted (they do not use the GPU here). Without CUDA it prints that none was used.
"""

from __future__ import annotations

import atexit
import os
import runpy
import sys

import torch  # now: a module first imported in an atexit hook cannot register its own (concurrent.futures)

# the project's own modules, found after anything the wrapped script's folder or the cwd holds
sys.path.append(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from utils.cli import run_cli  # noqa: E402
from utils.errors import UsageError  # noqa: E402

__all__ = ["peak_memory_line", "main"]


def peak_memory_line() -> str:
    """The process's peak GPU memory as one line (``-`` where CUDA was never initialised)."""
    if not (torch.cuda.is_available() and torch.cuda.is_initialized()):
        return "peak GPU memory: - (CUDA not used)"
    allocated = torch.cuda.max_memory_allocated() / 2**20
    reserved = torch.cuda.max_memory_reserved() / 2**20
    name = torch.cuda.get_device_name()
    return f"peak GPU memory: {allocated:.0f} MiB allocated, {reserved:.0f} MiB reserved ({name})"


def main(argv: list[str]) -> None:
    """Run ``argv`` (``script.py args...`` or ``-m module args...``) as ``__main__``."""
    if not argv or argv == ["-m"]:
        raise UsageError("usage: python bench/peak_memory.py (script.py | -m module) [args...]")
    atexit.register(lambda: print(peak_memory_line(), flush=True))
    if argv[0] == "-m":
        sys.argv = argv[1:]
        runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = argv
        sys.path.insert(0, os.path.dirname(os.path.abspath(argv[0])))  # as `python script.py` does
        runpy.run_path(argv[0], run_name="__main__")


if __name__ == "__main__":
    sys.path[0] = os.getcwd()  # not bench/: modules (-m) are found from the working directory, as `python -m`
    run_cli(main, sys.argv[1:])
