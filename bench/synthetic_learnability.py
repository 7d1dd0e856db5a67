"""Is the synthetic face data hard for trivial methods and learnable by a small network?

    python -m tools.make_synthetic --output data/synthetic --num-ids 300 --images-per-id 40 --pairs 1200
    python bench/synthetic_learnability.py --data data/synthetic --checkpoint work_dirs/quickstart-*/backbone.pth

Prints, per verification set, the 10-fold accuracy (insightface protocol, eval.verification) of
  pixels      raw-pixel cosine: flattened pixels minus the set's mean image, cosine similarity;
  untrained   a randomly initialised backbone of the checkpoint's architecture (or --network);
  trained     (with --checkpoint) the backbone train.py trained, e.g. by scripts/quickstart.sh.
Every column uses the flip-sum embedding, as the accuracies train.py logs.
The data should keep the first two low (<= 75% on lfw) and let training reach >= 90% on lfw.
"""

from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch
from sklearn.preprocessing import normalize

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from backbones import get_backbone  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from eval.embedder import load_backbone  # noqa: E402
from eval.verification import evaluate, load_bin, test  # noqa: E402
from utils.cli import run_cli  # noqa: E402

BINS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


def pixel_accuracy(images: torch.Tensor, flipped: torch.Tensor, issame: list[bool]) -> float:
    """Raw-pixel cosine of image + mirror, minus the set's mean, 10-fold accuracy."""
    x = (images.reshape(len(images), -1).double() + flipped.reshape(len(flipped), -1).double()).numpy()
    x -= x.mean(0, keepdims=True)
    _, _, acc, _, _, _ = evaluate(normalize(x), issame)
    return float(np.mean(acc))


def main(argv: list[str] | None = None) -> None:
    """Print the learnability table."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True, help="a directory written by tools.make_synthetic")
    p.add_argument("--bins", default=",".join(BINS))
    p.add_argument("--checkpoint", help="a trained backbone (backbone.pth or checkpoint-*.pt)")
    p.add_argument("--network", default="iresnet18",
                   help="untrained network when no --checkpoint gives the architecture")
    p.add_argument("--width", type=int, default=8, help="its width (64: the standard network)")
    p.add_argument("--seed", type=int, default=0, help="seed of the untrained network's init")
    p.add_argument("--untrained-on", help="comma-separated sets for the untrained column (default: all)")
    p.add_argument("--batch-size", type=int, default=64, help="inference batch (64 is fastest on small CPUs)")
    args = p.parse_args(argv)
    bins = [b for b in args.bins.split(",") if b]
    sets = {b: load_bin(os.path.join(args.data, f"{b}.bin")) for b in bins}
    rows = {b: {"pairs": len(sets[b][1]), "pixels": pixel_accuracy(*sets[b][0], sets[b][1])} for b in bins}

    trained = None
    if args.checkpoint:
        trained, meta = load_backbone(args.checkpoint)
        network, kwargs = meta["network"], meta["network_kwargs"]
    else:
        network, kwargs = args.network, ({"width": args.width} if args.width != 64 else {})
    torch.manual_seed(args.seed)
    untrained = get_backbone(network, **kwargs).eval()
    untrained_on = args.untrained_on.split(",") if args.untrained_on else bins
    for b in bins:
        if b in untrained_on:
            rows[b]["untrained"] = test(sets[b], untrained, batch_size=args.batch_size)[2]
        if trained is not None:
            rows[b]["trained"] = test(sets[b], trained, batch_size=args.batch_size)[2]

    print(f"machine: {describe_machine()}")
    print(f"command: python bench/synthetic_learnability.py {' '.join(argv if argv is not None else sys.argv[1:])}")
    print(f"network: {network} {kwargs}" + (f", trained: {args.checkpoint}" if trained is not None else ""))
    cols = ["pixels", "untrained"] + (["trained"] if trained is not None else [])
    print(f"{'set':<10} {'pairs':>6} " + " ".join(f"{c:>10}" for c in cols))
    for b in bins:
        cells = (f"{100 * rows[b][c]:9.2f}%" if c in rows[b] else f"{'-':>10}" for c in cols)
        print(f"{b:<10} {rows[b]['pairs']:>6} " + " ".join(cells))


if __name__ == "__main__":
    run_cli(main)
