"""Logging to console and file (rank 0 only), and a running-average meter."""

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


class AverageMeter:
    """Running mean of a scalar since the last reset."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.sum, self.count = 0.0, 0

    def update(self, value: float, n: int = 1) -> None:
        self.sum += value * n
        self.count += n

    @property
    def avg(self) -> float:
        return self.sum / max(self.count, 1)
