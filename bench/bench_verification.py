"""Benchmark: eval.verification.evaluate (searchsorted counts) vs insightface's per-threshold loops.

    python bench/bench_verification.py [--pairs 6000] [--dim 512] [--repeat 3]

The training callback calls evaluate twice per bin (with and without flip) on 5 bins every epoch;
LFW has 6000 pairs. The baseline is insightface's algorithm written as loops over the 400 + 4000
thresholds (its FAR interpolation replaced by ours, since interp1d raises on current SciPy).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import sklearn.preprocessing
from sklearn.model_selection import KFold

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe_machine  # noqa: E402
from eval.verification import evaluate, interpolate_threshold  # noqa: E402


def _counts(threshold, dist, issame):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, issame))
    fp = np.sum(np.logical_and(predict, np.logical_not(issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict), issame))
    return tp, fp, tn, fn


def _accuracy(threshold, dist, issame):
    tp, fp, tn, fn = _counts(threshold, dist, issame)
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def evaluate_loops(embeddings, issame, folds=10):
    """insightface's evaluate with its per-threshold Python loops (pca=0)."""
    issame = np.asarray(issame)
    e1, e2 = embeddings[0::2], embeddings[1::2]
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    splits = list(KFold(n_splits=folds, shuffle=False).split(np.arange(len(issame))))
    thresholds = np.arange(0, 4, 0.01)
    tprs, fprs = np.zeros((folds, len(thresholds))), np.zeros((folds, len(thresholds)))
    accuracy = np.zeros(folds)
    for f, (train, test) in enumerate(splits):
        acc_train = np.array([_accuracy(t, dist[train], issame[train])[2] for t in thresholds])
        for i, t in enumerate(thresholds):
            tprs[f, i], fprs[f, i], _ = _accuracy(t, dist[test], issame[test])
        accuracy[f] = _accuracy(thresholds[np.argmax(acc_train)], dist[test], issame[test])[2]
    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(folds), np.zeros(folds)
    for f, (train, test) in enumerate(splits):
        n_diff = float(np.sum(np.logical_not(issame[train])))
        far_train = np.array([_counts(t, dist[train], issame[train])[1] / n_diff
                              for t in thresholds])
        threshold = 0.0
        if far_train.max() >= 1e-3:
            threshold = interpolate_threshold(far_train, thresholds, 1e-3)
        tp, fp, _, _ = _counts(threshold, dist[test], issame[test])
        val[f] = tp / float(np.sum(issame[test]))
        far[f] = fp / float(np.sum(np.logical_not(issame[test])))
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, np.mean(val), np.std(val), np.mean(far)


def _best_time(fn, repeat):
    best, result = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)

    # a realistic set: same pairs correlated, different pairs random, unit norm
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(2 * args.pairs, args.dim))
    issame = np.arange(args.pairs) % 2 == 0
    emb[1::2][issame] = emb[0::2][issame] + 8.0 * rng.normal(size=(issame.sum(), args.dim))
    emb = sklearn.preprocessing.normalize(emb)

    t_loop, ref = _best_time(lambda: evaluate_loops(emb, issame), args.repeat)
    t_ours, ours = _best_time(lambda: evaluate(emb, issame), args.repeat)
    same = all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(ours, ref))

    print(f"machine: {describe_machine()}")
    print(f"set: {args.pairs} pairs x {args.dim}-d, 10 folds, best of {args.repeat}; "
          f"accuracy {np.mean(ours[2]):.4f}, identical results: {'yes' if same else 'NO'}")
    print(f"{'method':<40}{'seconds':>10}{'ratio':>10}")
    print(f"{'insightface loops (baseline)':<40}{t_loop:>10.3f}{1.0:>10.1f}")
    print(f"{'eval.verification.evaluate':<40}{t_ours:>10.4f}{t_loop / t_ours:>10.1f}")


if __name__ == "__main__":
    main()
