"""The paper's comparison table on the synthetic data: every margin head, alone and under ContraFace.

    python bench/compare_heads.py                                   # every head, single + contraface, seed 1
    python bench/compare_heads.py --heads arcface,cosface,curricularface,magface,adaface --seeds 1,2,3
    python bench/compare_heads.py --epochs 8 --data data/synthetic   # a longer schedule on the default set

Each (head, method, seed) is one ``train.main([...])`` run with ``--set`` overrides only (the same
schedule, data and seed list for every head), into ``--output`` (a temporary folder by default).
The number reported per verification set is the highest accuracy over the per-epoch
evaluations, as the paper reports, read from the run's ``training.log``; the mean column is the
mean of those. ContraFace rows also show the change of the mean against the same head alone
(the baseline, trained with the same schedule). Called again with the same ``--output``, it
reads back the runs that finished and resumes an interrupted one from its last checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import train  # noqa: E402
from bench.machine import describe_machine  # noqa: E402
from losses import HEADS  # noqa: E402
from tools import make_synthetic  # noqa: E402
from utils.cli import run_cli  # noqa: E402
from utils.config import load_config  # noqa: E402

TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
METHOD_NAMES = {"single": "", "contraface": " + ContraFace"}
HEAD_NAMES = {
    "arcface": "ArcFace", "cosface": "CosFace", "combined": "Combined", "mv_am": "MV-AM", "mv_arc": "MV-Arc",
    "curricularface": "CurricularFace", "magface": "MagFace", "adaface": "AdaFace",
    "elastic_arc": "ElasticFace-Arc", "elastic_cos": "ElasticFace-Cos",
}
_HIGHEST = re.compile(r"\[(\d+)\]\[(\w+)\]Accuracy-Highest: ([0-9.]+)")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--heads", default=",".join(HEADS), help="comma-separated heads (default: all)")
    p.add_argument("--methods", default="single,contraface", help="single and/or contraface")
    p.add_argument("--seeds", default="1", help="comma-separated training seeds (default 1)")
    p.add_argument("--data", default="",
                   help="synthetic data folder, made with tools.make_synthetic if missing "
                        "(default data/synthetic_heads-<ids>x<images>-<pairs>)")
    p.add_argument("--num-ids", type=int, default=60, help="training identities when making --data (default 60)")
    p.add_argument("--images-per-id", default="25", help="images per identity when making --data (default 25)")
    p.add_argument("--pairs", type=int, default=200, help="pairs per verification set when making --data")
    p.add_argument("--epochs", type=int, default=3, help="epochs; ContraFace's stage 2 is the last (default 3)")
    p.add_argument("--output", default="", help="keep the runs here (default: a temporary folder)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="extra train.py override applied to every run")
    return p.parse_args(argv)


def ensure_data(args: argparse.Namespace) -> None:
    """Render the synthetic set into ``args.data`` unless it is there."""
    if os.path.isfile(os.path.join(args.data, "train.rec")):
        return
    print(f"making {args.data}", file=sys.stderr, flush=True)
    make_synthetic.main([
        "--output", args.data, "--num-ids", str(args.num_ids), "--images-per-id", args.images_per_id,
        "--eval-ids", str(args.num_ids), "--pairs", str(args.pairs), "--no-progress",
    ])


def describe_data(path: str) -> str:
    """Classes, training images and pairs per set, from make_synthetic's manifest."""
    try:
        with open(os.path.join(path, "manifest.json")) as f:
            manifest = json.load(f)
        pairs = "/".join(sorted({str(b["pairs"]) for b in manifest.get("bins", {}).values()}))
        return f"{manifest['num_classes']} ids, {manifest['num_images']} images, {pairs} pairs per set"
    except (OSError, ValueError, KeyError):
        return "no manifest"


def run_overrides(args: argparse.Namespace, head: str, method: str, seed: int, output: str) -> list[str]:
    """The ``--set`` list of one run: the synthetic block, the shared schedule, head, method, seed."""
    sets = [
        f"rec={args.data}", f"output={output}", f"head={head}", f"method={method}", f"seed={seed}",
        f"num_epoch={args.epochs}", f"shrink_epoch=[{args.epochs}]",  # stage 2 = the last epoch
        "eval_batch_size=64", "frequent=20", f"val_targets={list(TARGETS)}",
        *args.set,
    ]
    return ["--dataset", "synthetic"] + [x for s in sets for x in ("--set", s)]


def read_highest(log_path: str) -> dict[str, float]:
    """The last ``Accuracy-Highest`` per target in a training.log (the best over evaluations)."""
    highest: dict[str, float] = {}
    with open(log_path) as f:
        for line in f:
            match = _HIGHEST.search(line)
            if match and match.group(2) in TARGETS:
                highest[match.group(2)] = float(match.group(3))
    return highest


def train_one(args: argparse.Namespace, head: str, method: str, seed: int, root: str) -> dict[str, float]:
    """Train one (head, method, seed) with train.main; its training log is silenced to the file."""
    output = os.path.join(root, f"{head}-{method}-seed{seed}")
    log_path = os.path.join(output, "training.log")
    if os.path.isfile(log_path) and "]-finished at step" in open(log_path).read():
        return read_highest(log_path)  # done by an earlier invocation with the same --output
    # --resume auto: a run interrupted earlier continues from its last checkpoint (exact resume)
    argv = run_overrides(args, head, method, seed, output) + ["--resume", "auto"]
    with open(os.devnull, "w") as devnull, contextlib.redirect_stdout(devnull):
        train.main(argv)
    return read_highest(log_path)


def format_table(results: dict[tuple[str, str], list[dict[str, float]]]) -> str:
    """Markdown table: accuracy (%) per set and the mean, seed mean (± std over seeds)."""
    lines = [
        "| head | " + " | ".join(TARGETS) + " | mean | Δ mean vs alone |",
        "|---|" + "---:|" * (len(TARGETS) + 2),
    ]
    means: dict[tuple[str, str], float] = {}
    for (head, method), runs in results.items():
        cells = []
        for target in (*TARGETS, "mean"):
            values = [100 * (r[target] if target != "mean" else statistics.mean(r[t] for t in TARGETS)) for r in runs]
            cell = f"{statistics.mean(values):.2f}"
            if len(values) > 1:
                cell += f" ± {statistics.stdev(values):.2f}"
            cells.append(cell)
        means[head, method] = statistics.mean(100 * statistics.mean(r[t] for t in TARGETS) for r in runs)
        alone = means.get((head, "single"))
        delta = f"{means[head, method] - alone:+.2f}" if method != "single" and alone is not None else ""
        name = HEAD_NAMES.get(head, head) + METHOD_NAMES.get(method, f" ({method})")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {delta} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    size = f"{args.num_ids}x{args.images_per_id}-{args.pairs}"
    args.data = args.data or os.path.join(ROOT, "data", f"synthetic_heads-{size}")
    heads = [h.strip() for h in args.heads.split(",") if h.strip()]
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [h for h in heads if h not in HEADS] + [m for m in methods if m not in METHOD_NAMES]
    if unknown:
        raise SystemExit(f"unknown head/method {unknown} (heads: {', '.join(HEADS)}; methods: single, contraface)")
    ensure_data(args)
    results: dict[tuple[str, str], list[dict[str, float]]] = {}
    start = time.time()
    with contextlib.ExitStack() as stack:
        root = args.output or stack.enter_context(tempfile.TemporaryDirectory(prefix="compare_heads-"))
        for head in heads:
            for method in methods:
                for seed in seeds:
                    tic = time.time()
                    highest = train_one(args, head, method, seed, root)
                    missing = [t for t in TARGETS if t not in highest]
                    if missing:
                        raise SystemExit(f"{head}/{method}/seed {seed}: no Accuracy-Highest for {missing} in the log")
                    results.setdefault((head, method), []).append(highest)
                    mean = statistics.mean(highest[t] for t in TARGETS)
                    print(f"{head:>15} {method:>10} seed {seed}: mean {100 * mean:.2f} ({time.time() - tic:.0f} s)",
                          file=sys.stderr, flush=True)
    print(f"machine: {describe_machine()}")
    cfg = load_config(dataset="synthetic", overrides=run_overrides(args, heads[0], methods[0], seeds[0], root)[3::2])
    print(f"data: {args.data} ({describe_data(args.data)}); {cfg.network} width {cfg.network_width}, "
          f"batch {cfg.batch_size}, lr {cfg.lr}, {cfg.num_epoch} epochs, ContraFace's stage 2 in the last; "
          f"seeds {seeds}; extra --set: {' '.join(args.set) or 'none'}")
    print(f"accuracy (%, 10-fold with flip), highest over the {args.epochs} per-epoch evaluations; "
          f"total {time.time() - start:.0f} s")
    print(format_table(results))
    return 0


if __name__ == "__main__":
    run_cli(main)
