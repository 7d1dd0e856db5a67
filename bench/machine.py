"""One line naming the machine a benchmark ran on, printed above every benchmark table."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo on Linux), else what platform knows."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or platform.machine()


def describe_machine() -> str:
    """CPU model, cores, load, library versions and the GPU, if any."""
    import numpy as np
    import torch

    load = f", load average {os.getloadavg()[0]:.1f}" if hasattr(os, "getloadavg") else ""
    parts = [f"{cpu_model()}, {os.cpu_count()} cores{load}",
             f"Python {platform.python_version()}, NumPy {np.__version__}",
             f"torch {torch.__version__} ({torch.get_num_threads()} threads)"]
    try:
        import onnxruntime

        parts.append(f"onnxruntime {onnxruntime.__version__}")
    except ImportError:
        pass
    parts.append(f"GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else "no GPU")
    return ", ".join(parts)
