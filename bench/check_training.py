"""Check that a short training run learned: the loss falls and the verification accuracy rises.

    python bench/check_training.py work_dirs/run/training.log [--target lfw] [--require]

Compares the first and the last logged ``Loss`` and the first and the last accuracy (with flip)
of ``--target`` in a ``training.log`` (read by tools/plot_log.py). Prints one verdict line;
``--require`` makes a run that did not learn exit with status 1 (bench/gpu_check.sh uses it on
the GPU; its CPU dry run, too short to learn, only reports).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from tools.plot_log import read_log  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.errors import UsageError  # noqa: E402


def verdict(path: str, target: str = "lfw") -> tuple[bool, str]:
    """(learned, one line: the first and last loss and accuracy of the run in ``path``)."""
    run = read_log(path)
    steps, losses = run.series(run.train, "Loss")
    acc_steps, accuracies = run.series(run.accuracy, target)
    if len(losses) < 2 or len(accuracies) < 2:
        raise UsageError(f"{path}: needs two logged losses and two {target} scores, has {len(losses)} and "
                         f"{len(accuracies)} (log more often: --set frequent=..., evaluate every epoch)")
    falls, rises = losses[-1] < losses[0], accuracies[-1] > accuracies[0]
    line = (f"{path}: Loss {losses[0]:.4f} (step {steps[0]}) -> {losses[-1]:.4f} (step {steps[-1]}) "
            f"{'falls' if falls else 'DOES NOT FALL'}; {target} {100 * accuracies[0]:.2f}% (step {acc_steps[0]}) "
            f"-> {100 * accuracies[-1]:.2f}% (step {acc_steps[-1]}) {'rises' if rises else 'DOES NOT RISE'}")
    return falls and rises, line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log", help="a training.log")
    parser.add_argument("--target", default="lfw", help="the verification set whose accuracy must rise")
    parser.add_argument("--require", action="store_true", help="exit 1 when the run did not learn")
    args = parser.parse_args(argv)
    learned, line = verdict(args.log, args.target)
    print(("learned: " if learned else "did not learn: ") + line)
    return 1 if args.require and not learned else 0


if __name__ == "__main__":
    run_cli(main)
