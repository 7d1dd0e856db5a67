"""Keep the memory a CPU forward pass frees for the next one (glibc's malloc tuning).

A CNN's forward on the CPU allocates activations of tens to hundreds of MB per batch (iresnet18
at width 8, batch 128: 51 MB per 112x112 feature map; width 64: 411 MB). glibc's malloc serves
every allocation above its mmap threshold (adaptive, at most 32 MB) with a fresh ``mmap`` and
unmaps it on ``free``, so every batch page-faults all its activations in again: on a 2-core CPU
that was 12-18 s of system time for one 1,200-pair verification set, more than the network's
own work (onnxruntime, with its arena allocator, had none). Raising the mmap and trim thresholds
keeps freed blocks in the heap, where the next batch finds them.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import sys

__all__ = ["keep_freed_memory"]

log = logging.getLogger(__name__)

# mallopt parameters (glibc's malloc.h)
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_done = False


def keep_freed_memory(threshold: int = 1 << 30) -> bool:
    """Serve blocks up to ``threshold`` bytes from the heap and keep up to that much freed there.

    Once per process (later calls do nothing); True when glibc took the settings. Elsewhere
    (macOS, musl) nothing is changed. The process's resident memory then stays at its peak.
    """
    global _done
    if _done:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # Setting the mmap threshold also turns glibc's adaptation off. Older glibc refuses mmap
    # thresholds above 32 MB: then blocks up to 32 MB are kept at least.
    for value in (threshold, min(threshold, 32 << 20)):
        if mallopt(_M_MMAP_THRESHOLD, value) and mallopt(_M_TRIM_THRESHOLD, value):
            log.debug("malloc: freed blocks up to %d bytes stay in the heap", value)
            _done = True
            return True
    return False
