"""Synthetic data generation speed, end to end (render + JPEG + write), per worker count.

    python bench/bench_synthetic.py                      # 300 ids x 40 images + 5 x 1200 pairs
    python bench/bench_synthetic.py --num-ids 1000 --pairs 6000 --workers 1,2

Runs ``tools.make_synthetic`` into a temporary directory once per worker count and prints images/s
with the ratio to the first count (the baseline, 1 worker by default). Run it on a quiet machine:
the numbers are wall-clock.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.machine import describe_machine  # noqa: E402
from tools import make_synthetic  # noqa: E402
from utils.cli import run_cli  # noqa: E402


def main(argv: list[str] | None = None) -> None:
    """Print the generation-speed table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--num-ids", type=int, default=300)
    p.add_argument("--images-per-id", default="40")
    p.add_argument("--eval-ids", type=int, default=300)
    p.add_argument("--pairs", type=int, default=1200)
    p.add_argument("--workers", default=f"1,{os.cpu_count() or 1}", help="comma-separated counts")
    args = p.parse_args(argv)
    counts = [int(w) for w in args.workers.split(",")]
    rows = []
    for workers in counts:
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            manifest = make_synthetic.main([
                "--output", tmp, "--num-ids", str(args.num_ids), "--images-per-id", args.images_per_id,
                "--eval-ids", str(args.eval_ids), "--pairs", str(args.pairs),
                "--workers", str(workers), "--no-progress"])
            seconds = time.perf_counter() - start
        images = manifest["num_images"] + 2 * args.pairs * len(manifest["bins"])
        rows.append((workers, images, seconds))
    print(f"machine: {describe_machine()}")
    print(f"command: python bench/bench_synthetic.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"{'workers':>7} {'images':>7} {'seconds':>8} {'images/s':>9} {'ratio':>6}")
    base = rows[0][1] / rows[0][2]
    for workers, images, seconds in rows:
        print(f"{workers:>7} {images:>7} {seconds:>8.1f} {images / seconds:>9.0f} {images / seconds / base:>5.2f}x")


if __name__ == "__main__":
    run_cli(main)
