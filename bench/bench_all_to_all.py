"""Benchmark: eval.all_to_all (exact, blockwise) vs the insightface way (every score in memory + roc_curve).

    python bench/bench_all_to_all.py [--sizes 20000 100000 300000] [--dim 512] [--per-id 4]
        [--block-size 2048] [--device cpu|cuda] [--baseline-max 20000]

Features: clustered, ``--per-id`` images per identity (a centre plus noise of std ``--noise``:
same-identity cosines around 0.2, so the TAR moves across the FARs). Each measurement runs in a
child process, so its peak memory is its own: RSS (ru_maxrss) on the CPU,
torch.cuda.max_memory_allocated on a GPU. The baseline (insightface's IJB/MFR evaluation: the
float32 score of every pair in memory, sklearn.metrics.roc_curve, the TPR at the FPR nearest to
each FAR, threshold read at that point) runs up to ``--baseline-max`` images (20,000: 2e8
pairs, about 8 GB); at those sizes the ratio and the largest TAR difference are printed.
Then a projection to 1.6M images (MFR's all-to-all: 1.3e12 pairs): measured on the GPU when
there is one, else from the CPU's measured time per pair and, for a GPU, from nominal H100
numbers (stated as such).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe_machine  # noqa: E402
from eval.all_to_all import DEFAULT_FARS, all_to_all_table  # noqa: E402
from utils.cli import run_cli  # noqa: E402

MFR_IMAGES = 1_600_000
# nominal H100 SXM figures, used only for the projection when no GPU is present
NOMINAL_GPU_FP64_FLOPS = 67e12 * 0.6  # FP64 tensor cores at 60 % of peak
NOMINAL_GPU_BYTES_PER_S = 3.35e12 * 0.6  # HBM3 at 60 %
BYTES_PER_PAIR_PASS = 40  # score write/read, bins, compare: what the element-wise work of a pass moves


def make_features(n: int, dim: int, per_id: int, noise: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` clustered float32 features, ``per_id`` images per identity."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) // per_id
    feats = rng.standard_normal((n, dim), dtype=np.float32) * noise
    feats += rng.standard_normal((labels[-1] + 1, dim), dtype=np.float32)[labels]
    return feats, labels


def insightface_way(feats: np.ndarray, labels: np.ndarray, fars) -> list[dict]:
    """Every pair's float32 score in memory, roc_curve, the TPR at the FPR nearest each FAR."""
    from sklearn.metrics import roc_curve

    feats = feats / np.linalg.norm(feats, axis=1, keepdims=True)
    iu = np.triu_indices(len(feats), 1)
    scores = (feats @ feats.T)[iu]
    same = labels[iu[0]] == labels[iu[1]]
    del iu
    fpr, tpr, thresholds = roc_curve(same, scores)
    rows = []
    for far in fars:
        i = int(np.argmin(np.abs(fpr - far)))
        rows.append({"far": far, "tar": float(tpr[i]), "threshold": float(thresholds[i]), "far_reached": float(fpr[i])})
    return rows


def child(args: argparse.Namespace) -> None:
    """One measurement (``--child ours|insightface --n N``): JSON on stdout."""
    feats, labels = make_features(args.n, args.dim, args.per_id, args.noise)
    cuda = args.device == "cuda"
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    if args.child == "ours":
        table = all_to_all_table(feats, labels, DEFAULT_FARS, args.block_size, args.device, unreachable="skip")
        rows = [vars(r) for r in table.rows]
    else:
        rows = insightface_way(feats, labels, DEFAULT_FARS)
    if cuda:
        torch.cuda.synchronize()
    seconds = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() if cuda else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "rows": rows}))


def run_child(args: argparse.Namespace, kind: str, n: int) -> dict:
    cmd = [sys.executable, os.path.abspath(__file__), "--child", kind, "--n", str(n), "--dim", str(args.dim),
           "--per-id", str(args.per_id), "--noise", str(args.noise), "--block-size", str(args.block_size),
           "--device", args.device]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def matmul_rate(device: str, dim: int, block: int) -> float:
    """Measured float64 pair scores per second of one block matmul (the exact scores' dtype)."""
    a = torch.randn(block, dim, dtype=torch.float64, device=device)
    out = torch.empty(block, block, dtype=torch.float64, device=device)
    torch.mm(a, a.T, out=out)
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < 2.0:
        torch.mm(a, a.T, out=out)
        n += 1
    if device == "cuda":
        torch.cuda.synchronize()
    return n * block * block / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> None:
    """Run the benchmark table."""
    p = argparse.ArgumentParser(prog="python bench/bench_all_to_all.py", description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[20_000, 100_000, 300_000])
    p.add_argument("--dim", type=int, default=512)
    p.add_argument("--per-id", type=int, default=4)
    p.add_argument("--noise", type=float, default=2.0)
    p.add_argument("--block-size", type=int, default=2048)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--baseline-max", type=int, default=20_000)
    p.add_argument("--child", choices=["ours", "insightface"], help=argparse.SUPPRESS)
    p.add_argument("--n", type=int, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        child(args)
        return
    print(describe_machine())
    print(f"features: {args.dim}-d, {args.per_id} images per identity, noise {args.noise}; "
          f"block {args.block_size}; device {args.device}\n")
    header = f"{'N':>8} {'pairs':>9} {'ours s':>8} {'peak MB':>8} {'insightface s':>13} {'peak MB':>8} " \
             f"{'ratio':>6} {'max |dTAR|':>10}  TAR % at 1e-1 .. 1e-6 (ours)"
    print(header)
    per_pair = None
    for n in args.sizes:
        pairs = n * (n - 1) // 2
        ours = run_child(args, "ours", n)
        per_pair = ours["seconds"] / pairs
        base_cells = f"{'-':>13} {'-':>8} {'-':>6} {'-':>10}"
        if n <= args.baseline_max:
            base = run_child(args, "insightface", n)
            by_far = {r["far"]: r["tar"] for r in base["rows"]}
            diff = max(abs(r["tar"] - by_far[r["far"]]) for r in ours["rows"])
            base_cells = (f"{base['seconds']:>13.1f} {base['peak_bytes'] / 2**20:>8.0f} "
                          f"{base['seconds'] / ours['seconds']:>6.1f} {diff:>10.2e}")
        tars = " ".join(f"{100 * r['tar']:.2f}" for r in ours["rows"])
        print(f"{n:>8} {pairs:>9.2e} {ours['seconds']:>8.1f} {ours['peak_bytes'] / 2**20:>8.0f} {base_cells}  {tars}",
              flush=True)
    mfr_pairs = MFR_IMAGES * (MFR_IMAGES - 1) // 2
    rate = matmul_rate(args.device, args.dim, args.block_size)
    print(f"\nfloat64 block matmul on {args.device}: {rate / 1e9:.2f} G pair scores/s "
          f"(one pass over 1.6M images: {mfr_pairs / rate / 60:.1f} min of matmul)")
    if per_pair is not None:
        print(f"projection, 1.6M images ({mfr_pairs:.2e} pairs) on {args.device} from the {args.sizes[-1]} run: "
              f"{per_pair * mfr_pairs / 3600:.1f} h")
    if args.device != "cuda":
        matmul = mfr_pairs * 2 * args.dim / NOMINAL_GPU_FP64_FLOPS
        elementwise = mfr_pairs * BYTES_PER_PAIR_PASS / NOMINAL_GPU_BYTES_PER_S
        print(f"no GPU: nominal H100 projection (FP64 {NOMINAL_GPU_FP64_FLOPS / 1e12:.0f} TFLOPS, "
              f"{NOMINAL_GPU_BYTES_PER_S / 1e12:.1f} TB/s effective), 2 passes: "
              f"{2 * (matmul + elementwise) / 60:.1f} min ({matmul:.0f} s matmul + {elementwise:.0f} s "
              f"element-wise per pass); rerun with --device cuda on a GPU to measure it")


if __name__ == "__main__":
    run_cli(main)
