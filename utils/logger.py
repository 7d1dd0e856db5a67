"""Logging to console and file (rank 0 only)."""

from __future__ import annotations

import logging
import os
import sys


def init_logging(rank: int, output_dir: str, filename: str = "training.log") -> logging.Logger:
    """Configure the root logger: rank 0 logs to stdout and ``output_dir/filename``; others warn only."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter("[%(asctime)s]-%(message)s", datefmt="%Y-%m-%d %H:%M:%S")
    if rank == 0:
        root.setLevel(logging.INFO)
        os.makedirs(output_dir, exist_ok=True)
        handlers: list[logging.Handler] = [
            logging.StreamHandler(sys.stdout),
            logging.FileHandler(os.path.join(output_dir, filename)),
        ]
    else:
        root.setLevel(logging.WARNING)
        handlers = [logging.StreamHandler(sys.stderr)]
    for handler in handlers:
        handler.setFormatter(formatter)
        root.addHandler(handler)
    return root
