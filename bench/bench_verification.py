"""Benchmark: verification, ours vs insightface's, in one run.

    python bench/bench_verification.py [--pairs 6000] [--dim 512] [--repeat 3]
    python bench/bench_verification.py --data DIR [--network iresnet18 --width 8] [--batch-size 64]

1. The metric: eval.verification.evaluate (searchsorted counts) vs insightface's per-threshold
   loops (400 + 4000 thresholds; its FAR interpolation replaced by ours, since interp1d raises on
   current SciPy). The training callback calls evaluate twice per bin on 5 bins every epoch.
2. With ``--data`` (a folder of the five .bin files, e.g. tools.make_synthetic's): the five-bin
   evaluation the callback runs, load_bin (uint8, threads) + test() (batches normalised on the
   device) vs insightface's load_bin (float32 tensors, one image at a time) + test() (batches
   normalised on the host, then copied; xnorm and evaluate by loops), with the same backbone:
   the memory of the loaded bins, the load time, the test time, and that the accuracies agree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import cv2
import numpy as np
import sklearn.preprocessing
import torch
from sklearn.model_selection import KFold

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from bench.machine import describe_machine  # noqa: E402
from eval.verification import _unpickle_bin, evaluate, interpolate_threshold, load_bin, test  # noqa: E402
from utils.cli import run_cli  # noqa: E402


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
    for f, (train, held_out) in enumerate(splits):
        acc_train = np.array([_accuracy(t, dist[train], issame[train])[2] for t in thresholds])
        for i, t in enumerate(thresholds):
            tprs[f, i], fprs[f, i], _ = _accuracy(t, dist[held_out], issame[held_out])
        accuracy[f] = _accuracy(thresholds[np.argmax(acc_train)], dist[held_out], issame[held_out])[2]
    thresholds = np.arange(0, 4, 0.001)
    val, far = np.zeros(folds), np.zeros(folds)
    for f, (train, held_out) in enumerate(splits):
        n_diff = float(np.sum(np.logical_not(issame[train])))
        far_train = np.array([_counts(t, dist[train], issame[train])[1] / n_diff
                              for t in thresholds])
        threshold = 0.0
        if far_train.max() >= 1e-3:
            threshold = interpolate_threshold(far_train, thresholds, 1e-3)
        tp, fp, _, _ = _counts(threshold, dist[held_out], issame[held_out])
        val[f] = tp / float(np.sum(issame[held_out]))
        far[f] = fp / float(np.sum(np.logical_not(issame[held_out])))
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, np.mean(val), np.std(val), np.mean(far)


def insightface_load_bin(path, image_size=(112, 112)):
    """insightface's load_bin: two float32 (2P, 3, H, W) tensors filled one decoded image at a time."""
    images, issame = _unpickle_bin(path)
    data_list = [torch.empty((len(issame) * 2, 3, *image_size)) for _ in range(2)]
    for idx in range(len(issame) * 2):
        img = cv2.cvtColor(cv2.imdecode(np.frombuffer(images[idx], np.uint8), cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        img = img.transpose(2, 0, 1)
        for flip in (0, 1):
            if flip:
                img = img[:, :, ::-1]
            data_list[flip][idx][:] = torch.from_numpy(np.ascontiguousarray(img))
    return data_list, issame


@torch.no_grad()
def insightface_test(data_set, backbone, batch_size, device, nfolds=10):
    """insightface's test(): host-normalised batches copied to the device, loops for xnorm and evaluate."""
    data_list, issame_list = data_set
    embeddings_list = []
    for data in data_list:
        embeddings = None
        for ba in range(0, data.shape[0], batch_size):
            bb = min(ba + batch_size, data.shape[0])
            count = bb - ba
            img = ((data[bb - batch_size:bb] / 255) - 0.5) / 0.5
            out = backbone(img.to(device)).detach().cpu().numpy()
            if embeddings is None:
                embeddings = np.zeros((data.shape[0], out.shape[1]))
            embeddings[ba:bb, :] = out[(batch_size - count):, :]
        embeddings_list.append(embeddings)
    xnorm, count = 0.0, 0
    for embed in embeddings_list:
        for i in range(embed.shape[0]):
            xnorm += np.linalg.norm(embed[i])
            count += 1
    embeddings = sklearn.preprocessing.normalize(embeddings_list[0] + embeddings_list[1])
    _, _, accuracy, _, _, _ = evaluate_loops(embeddings, issame_list, nfolds)
    return 0.0, 0.0, float(np.mean(accuracy)), float(np.std(accuracy)), xnorm / count, embeddings_list


def five_bins(args) -> None:
    """The five-bin comparison (part 2 of the docstring), the two paths alternating bin by bin."""
    from backbones import get_backbone

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    kwargs = {"width": args.width} if args.width else {}
    backbone = get_backbone(args.network, **kwargs).to(device).eval()
    if args.weights:
        from utils.checkpoint import load_weights

        load_weights(backbone, args.weights)
    paths = [os.path.join(args.data, f"{name}.bin") for name in args.targets.split(",")]
    methods = {
        "insightface: float32 bins, host normalisation, loops (baseline)": (
            insightface_load_bin, lambda d: insightface_test(d, backbone, args.batch_size, device)),
        "ours: uint8 bins, normalised per batch on the device": (
            load_bin, lambda d: test(d, backbone, batch_size=args.batch_size, device=device)),
    }
    loaded, memory, load_s = {}, {}, {}
    for name, (loader, _) in methods.items():
        start = time.perf_counter()
        loaded[name] = [loader(p) for p in paths]
        load_s[name] = time.perf_counter() - start
        memory[name] = sum(t.untyped_storage().nbytes() for data_list, _ in loaded[name] for t in data_list)
    test_s = dict.fromkeys(methods, 0.0)
    accs = {name: [] for name in methods}
    for i in range(len(paths)):  # alternating bin by bin: a busy moment of the machine hits both
        for name, (_, tester) in methods.items():
            best = float("inf")
            for _ in range(args.repeat):
                if device.type == "cuda":
                    torch.cuda.synchronize()
                start = time.perf_counter()
                acc = tester(loaded[name][i])[2]
                if device.type == "cuda":
                    torch.cuda.synchronize()
                best = min(best, time.perf_counter() - start)
            test_s[name] += best
            accs[name].append(acc)
    base, ours = list(methods)
    images = sum(len(issame) * 2 for _, issame in loaded[base])
    print(f"\nfive bins: {', '.join(os.path.basename(p) for p in paths)} ({images} images, x2 with the "
          f"mirrors), {args.network} width {args.width or 64}, batch {args.batch_size}, {device}, "
          f"test time: best of {args.repeat} per bin")
    print(f"{'path':<66}{'MiB':>8}{'load s':>9}{'test s':>9}{'ratio':>8}")
    for name in methods:
        print(f"{name:<66}{memory[name] / 2**20:>8.1f}{load_s[name]:>9.2f}{test_s[name]:>9.2f}"
              f"{test_s[base] / test_s[name]:>8.2f}")
    print(f"accuracy with flip per bin: {' '.join(f'{a:.4f}' for a in accs[ours])}; identical to the "
          f"baseline's: {'yes' if accs[ours] == accs[base] else 'NO: ' + str(accs[base])}")


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
    parser.add_argument("--data", help="folder of the five .bin files: also time the five-bin evaluation")
    parser.add_argument("--targets", default="lfw,cfp_fp,agedb_30,calfw,cplfw")
    parser.add_argument("--network", default="iresnet18")
    parser.add_argument("--width", type=int, default=0, help="iresnet width (0: the network's own, 64)")
    parser.add_argument("--weights", help="backbone weights (default: random; the timing does not depend on them)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", help="cuda or cpu (default: cuda if available)")
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
    if args.data:
        five_bins(args)


if __name__ == "__main__":
    run_cli(main)
