"""MegaFace challenge 1: devkit-layout features, noise removal, the protocol, the official devkit.

    python -m eval.megaface.megaface_eval --weights W [--network N] \\
        --facescrub-root data/megaface/facescrub_images \\
        --megaface-root data/megaface/megaface_images \\
        --output work_dirs/megaface [--sizes 10 100 1000 ...] [--devkit data/megaface/devkit]

Steps (insightface's gen_megaface.py + remove_noises.py + run.sh, without mxnet):

1. extract: every probe and distractor image ->
   ``OUT/features/{facescrub,megaface}/<rel>_<algo>.bin`` (flip test: L2-normalised sum of the
   embeddings of the image and its mirror). Existing feature files are reused, so an interrupted
   run resumes; ``--force`` re-extracts. ``OUT/features/<algo>.json`` records which weights and
   settings made them, and a run with others under the same ``--algo`` is refused.
2. noise removal (insightface's lists, eval.megaface.noises), in memory; the cleaned tree is
   written to ``OUT/features_clean/`` when the devkit runs or with ``--save-clean-features``.
3. the devkit-free protocol (eval.megaface.protocol) for each distractor-set size ->
   ``OUT/megaface_<algo>.json``, ``OUT/cmc_<algo>.png``, ``OUT/roc_<algo>.png`` and a table.
4. with ``--devkit DIR``: the official run_experiment.py on the same features (OUT/devkit_<algo>/).

Under ``torchrun --nproc_per_node=N`` each process (one GPU each where CUDA exists) embeds a share
of the images (eval.extract: the same batches as one process, so the same features); rank 0 alone
writes the features and runs steps 2-4.

``--weights`` may be a run folder: each per-step weight file (``backbone-<step>.pth``,
``<step>model.pth``, ``checkpoint-<step>.pt``) is evaluated as above with the file's name as its
algo; rank-1 and TAR at the first ``--fars`` on the largest distractor set are cached per file in
``OUT/megaface_steps_cache.json`` (a re-run evaluates only new or changed files), and
``OUT/megaface_steps.json`` and the printed table give every step and the best one.

Default paths follow insightface's MegaFace package (one folder holding facescrub_images/,
megaface_images/, devkit/, facescrub_noises.txt and megaface_noises.txt): the template lists
default to ``<megaface-root>/../devkit/templatelists`` and the noise lists to
``<megaface-root>/../*_noises.txt``.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
from typing import Sequence

import numpy as np
import torch

from eval import extract
from eval.steps import ResultCache, evaluate_steps, file_stamp, optional_settings, report_steps, settings_key
from utils.checkpoint import add_channel_order_argument
from utils.cli import run_cli
from utils.distributed import DistEnv
from utils.fileio import atomic_write_bytes
from utils.run_files import require_step_weights

from . import devkit as devkit_mod
from .features import EmbedFn, extract_features, load_features, write_features
from .lists import (
    PROBE_LIST_NAME,
    MegaFaceError,
    available_sizes,
    read_distractor_list,
    read_probe_list,
)
from .noises import read_facescrub_noises, read_megaface_noises, remove_noises
from .protocol import DEFAULT_CHUNK, DEFAULT_FARS, DEFAULT_MAX_RANK, evaluate
from .report import format_table, plot_cmc, plot_roc

logger = logging.getLogger("eval.megaface")

_ALGO_OK = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]*$")


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser."""
    p = argparse.ArgumentParser(
        prog="python -m eval.megaface.megaface_eval",
        description="MegaFace challenge 1 (FaceScrub probes): devkit-format features, insightface "
        "noise removal, rank-1/CMC identification and TAR@FAR verification, optional devkit.",
    )
    g = p.add_argument_group("model")
    g.add_argument("--weights", required=True,
                   help="checkpoint (.pt/.pth: ours, ContraFace, insightface) or .onnx, or a run "
                   "folder (every per-step weight file in it)")
    g.add_argument("--network", help="backbone name (read from our checkpoints when omitted)")
    g.add_argument("--width", type=int, help="backbone width (reduced-width iresnets)")
    add_channel_order_argument(g)
    g.add_argument("--device", help="cuda / cpu (default: cuda when available)")
    g.add_argument("--batch-size", type=int, default=128)
    g.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads reading and aligning images (0: in the main thread)")
    g.add_argument("--no-amp", action="store_true", help="fp32 on GPU (AMP is the default there)")
    g.add_argument("--no-flip", action="store_true",
                   help="no flip test (default: image + mirror, as gen_megaface.py)")
    g.add_argument("--algo", help="feature-file suffix <image>_<algo>.bin (default: weights' name)")

    g = p.add_argument_group("data")
    g.add_argument("--facescrub-root", required=True,
                   help="FaceScrub probe images (aligned 112x112, or with <image>.json landmarks)")
    g.add_argument("--megaface-root", required=True, help="MegaFace distractor images")
    g.add_argument("--templatelists",
                   help="devkit template lists (default: <devkit>/templatelists, "
                   "else <megaface-root>/../devkit/templatelists)")
    g.add_argument("--probe-list", help=f"default: <templatelists>/{PROBE_LIST_NAME}")
    g.add_argument("--sizes", type=int, nargs="+",
                   help="distractor-set sizes (default: every list available)")
    g.add_argument("--distractor-set", type=int, default=1, help="distractor set (devkit: 1)")
    g.add_argument("--facescrub-noises", help="default: <megaface-root>/../facescrub_noises.txt")
    g.add_argument("--megaface-noises", help="default: <megaface-root>/../megaface_noises.txt")
    g.add_argument("--no-noise-removal", action="store_true")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise-removal jitter")

    g = p.add_argument_group("protocol and output")
    g.add_argument("--output", required=True, help="output folder (features, results)")
    g.add_argument("--max-rank", type=int, default=DEFAULT_MAX_RANK,
                   help="CMC computed up to this rank")
    g.add_argument("--fars", type=float, nargs="+", default=list(DEFAULT_FARS),
                   help="FARs of the TAR@FAR table (the first one is in the printed table)")
    g.add_argument("--chunk-size", type=int, default=DEFAULT_CHUNK,
                   help="distractors scored per chunk (memory: probes x chunk floats)")
    g.add_argument("--save-clean-features", action="store_true",
                   help="write the noise-cleaned tree OUT/features_clean (done with --devkit)")
    g.add_argument("--force", action="store_true",
                   help="re-extract features and overwrite all outputs")
    g.add_argument("--overwrite-results", action="store_true",
                   help="keep the extracted features, overwrite the result files")

    g = p.add_argument_group("official devkit")
    g.add_argument("--devkit", help="MegaFace devkit folder (experiments/, bin/, models/, ...)")
    g.add_argument("--devkit-python",
                   help="interpreter for run_experiment.py (default: python2 if found)")
    g.add_argument("--devkit-ld-library-path",
                   help="folder with the OpenCV 2.4 libraries the devkit binaries need")
    g.add_argument("--devkit-delete-matrices", action="store_true", help="pass -d (saves disk)")
    return p


def default_algo(weights: str | None) -> str:
    """A devkit-safe algo name from the weights file name (no dots: the devkit splits on them)."""
    stem = os.path.splitext(os.path.basename(weights or "model"))[0]
    return re.sub(r"[^A-Za-z0-9_-]+", "-", stem).strip("-_") or "model"


def _noise_lists(args: argparse.Namespace, parent: str) -> tuple[str, str] | None:
    if args.no_noise_removal:
        return None
    fs = args.facescrub_noises or os.path.join(parent, "facescrub_noises.txt")
    mf = args.megaface_noises or os.path.join(parent, "megaface_noises.txt")
    if os.path.exists(fs) and os.path.exists(mf):
        return fs, mf
    if args.facescrub_noises or args.megaface_noises:
        missing = [p for p in (fs, mf) if not os.path.exists(p)]
        raise MegaFaceError(f"noise list not found: {', '.join(missing)}")
    logger.warning("no noise lists at %s and %s: evaluating without noise removal (insightface's "
                   "numbers use them; pass --facescrub-noises/--megaface-noises)", fs, mf)
    return None


def _resolve(args: argparse.Namespace) -> dict:
    """Check inputs early and resolve the default paths."""
    for name in ("facescrub_root", "megaface_root"):
        if not os.path.isdir(getattr(args, name)):
            flag = "--" + name.replace("_", "-")
            raise MegaFaceError(f"{flag} {getattr(args, name)}: folder not found")
    parent = os.path.dirname(os.path.abspath(args.megaface_root))
    templatelists = args.templatelists or (
        os.path.join(args.devkit, "templatelists") if args.devkit
        else os.path.join(parent, "devkit", "templatelists")
    )
    sizes = args.sizes or available_sizes(templatelists, args.distractor_set)
    if not sizes:
        raise MegaFaceError(
            f"{templatelists}: no megaface_features_list.json_<size>_{args.distractor_set} files "
            "(pass --templatelists, or --sizes with the lists present)"
        )
    algo = args.algo or default_algo(args.weights)
    if not _ALGO_OK.match(algo):
        raise MegaFaceError(
            f"--algo {algo!r}: use letters, digits, '-' and '_' (the devkit splits names on '.')")
    noises = _noise_lists(args, parent)
    if args.devkit:
        if args.distractor_set != 1:
            raise MegaFaceError("--devkit runs the devkit's distractor set 1; drop --distractor-set")
        devkit_mod.check_devkit(args.devkit)  # before hours of extraction, not after
    return {
        "templatelists": templatelists,
        "probe_list": args.probe_list or os.path.join(templatelists, PROBE_LIST_NAME),
        "sizes": sorted(set(sizes)),
        "algo": algo,
        "noises": noises,
    }


def _check_outputs(paths: Sequence[str], args: argparse.Namespace) -> None:
    existing = [p for p in paths if os.path.exists(p)]
    if existing and not (args.force or args.overwrite_results):
        raise FileExistsError(
            f"refusing to overwrite {', '.join(existing)}; pass --overwrite-results to recompute "
            "the results from the extracted features, or --force to re-extract them too"
        )


def _feature_stamp(args: argparse.Namespace) -> dict:
    """What made the features under one algo name: the weights file (and its version), the settings."""
    weights = os.path.abspath(args.weights) if args.weights else None
    return {
        "weights": weights,
        "weights_stamp": file_stamp(weights) if weights and os.path.exists(weights) else None,
        "network": args.network,
        "width": args.width,
        "flip": not args.no_flip,
        "amp": not args.no_amp,  # AMP (on CUDA) changes the features too
        **optional_settings(channel_order=args.channel_order),
    }


def _check_stamp(feature_dir: str, algo: str, args: argparse.Namespace) -> None:
    """Refuse to mix features of different models under one algo name (a silent wrong result)."""
    path = os.path.join(feature_dir, f"{algo}.json")
    stamp = _feature_stamp(args)
    if os.path.exists(path) and not args.force:
        with open(path, encoding="utf-8") as f:
            old = json.load(f)
        if old != stamp:
            diff = {k: (old.get(k), v) for k, v in stamp.items() if old.get(k) != v}
            raise MegaFaceError(
                f"{path}: the features under {feature_dir} with suffix _{algo}.bin come from "
                f"another model or setting {diff}; pass another --algo, or --force to re-extract"
            )
    os.makedirs(feature_dir, exist_ok=True)
    atomic_write_bytes(path, json.dumps(stamp, indent=2).encode())


def _load_embedder(args: argparse.Namespace) -> EmbedFn:
    from eval.embedder import Embedder

    kwargs = {"width": args.width} if args.width else {}
    return Embedder.load(args.weights, network=args.network, device=args.device,
                         batch_size=args.batch_size, amp=False if args.no_amp else None,
                         channel_order=args.channel_order, **kwargs)


def _union(lists: dict[int, list[str]]) -> tuple[list[str], dict[str, int]]:
    """Every distractor of every requested list once, in first-seen order, and its position."""
    union: list[str] = []
    where: dict[str, int] = {}
    for paths in lists.values():
        for p in paths:
            if p not in where:
                where[p] = len(union)
                union.append(p)
    return union, where


def _devkit_summary(devkit_results: dict) -> str:
    lines = []
    for size, res in devkit_results.items():
        rank1 = "n/a" if res["rank1"] is None else f"{100 * res['rank1']:.3f} %"
        lines.append(f"devkit, {size} distractors: rank-1 {rank1}")
    return "\n".join(lines)


def run(args: argparse.Namespace, embedder: EmbedFn | None = None, env: DistEnv | None = None) -> dict:
    """Run the whole evaluation for parsed ``args``; ``embedder`` replaces loading --weights.

    Under torchrun (``env``) ranks other than 0 embed their share of the images and return {}.
    """
    cfg = _resolve(args)
    algo, out = cfg["algo"], args.output
    json_path = os.path.join(out, f"megaface_{algo}.json")
    cmc_path, roc_path = os.path.join(out, f"cmc_{algo}.png"), os.path.join(out, f"roc_{algo}.png")
    _check_outputs([json_path, cmc_path, roc_path], args)
    probe = read_probe_list(cfg["probe_list"])
    lists = {s: read_distractor_list(cfg["templatelists"], s, args.distractor_set)
             for s in cfg["sizes"]}
    union, where = _union(lists)

    # 1. features (kept across runs)
    feature_dir = os.path.join(out, "features")
    main = env is None or env.is_main
    if main:
        _check_stamp(feature_dir, algo, args)  # rank 0 writes the stamp
    if embedder is None:
        embedder = _load_embedder(args)
    common = {"flip": not args.no_flip, "batch_size": args.batch_size,
              "num_workers": args.num_workers, "force": args.force, "env": env}
    fs_dir, mf_dir = os.path.join(feature_dir, "facescrub"), os.path.join(feature_dir, "megaface")
    fs_stats = extract_features(embedder, args.facescrub_root, probe.paths, fs_dir, algo,
                                desc="facescrub", **common)
    mf_stats = extract_features(embedder, args.megaface_root, union, mf_dir, algo,
                                desc="megaface", **common)
    if not main:
        return {}  # rank 0 scores and writes
    probes = load_features(fs_dir, probe.paths, algo, desc="read facescrub")
    distractors = load_features(mf_dir, union, algo, desc="read megaface")

    # 2. noise removal (in memory; the cleaned tree only when something reads it)
    noise_info: dict = {"enabled": cfg["noises"] is not None}
    if cfg["noises"]:
        fs_list, mf_list = cfg["noises"]
        probes, distractors, nstats = remove_noises(
            probes, probe.ids, probe.paths, distractors, union,
            read_facescrub_noises(fs_list), read_megaface_noises(mf_list), args.seed)
        noise_info.update(facescrub_noises=os.path.abspath(fs_list),
                          megaface_noises=os.path.abspath(mf_list),
                          facescrub_replaced=nstats.facescrub_noisy,
                          megaface_replaced=nstats.megaface_noisy, seed=args.seed,
                          rule="insightface remove_noises.py (see eval/megaface/noises.py)")
    devkit_features = feature_dir
    if cfg["noises"] and (args.devkit or args.save_clean_features):
        devkit_features = os.path.join(out, "features_clean")
        write_features(os.path.join(devkit_features, "facescrub"), probe.paths, probes, algo)
        write_features(os.path.join(devkit_features, "megaface"), union, distractors, algo)

    # 3. the devkit-free protocol, per distractor-set size
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    results: dict = {
        "algo": algo,
        "weights": os.path.abspath(args.weights) if args.weights else None,
        "network": args.network,
        "embedder": str(getattr(embedder, "source", type(embedder).__name__)),
        "flip": not args.no_flip,
        "facescrub_root": os.path.abspath(args.facescrub_root),
        "megaface_root": os.path.abspath(args.megaface_root),
        "templatelists": os.path.abspath(cfg["templatelists"]),
        "probe_list": os.path.abspath(cfg["probe_list"]),
        "distractor_set": args.distractor_set,
        "features": os.path.abspath(feature_dir),
        "features_clean": (None if devkit_features == feature_dir
                           else os.path.abspath(devkit_features)),
        "feature_dim": int(probes.shape[1]),
        "extraction": {"facescrub": vars(fs_stats), "megaface": vars(mf_stats)},
        "noise_removal": noise_info,
        "protocol": {"score": "-||a-b||^2", "max_rank": args.max_rank, "fars": list(args.fars),
                     "device": str(device)},
        "sizes": {},
    }
    for size, paths in lists.items():
        index = np.fromiter((where[p] for p in paths), dtype=np.int64, count=len(paths))
        # the largest list is usually the whole union in order: skip a copy of up to 2 GB
        same = len(index) == len(distractors) and np.array_equal(index, np.arange(len(index)))
        subset = distractors if same else distractors[index]
        res = evaluate(probes, probe.ids, subset, args.max_rank, args.fars, args.chunk_size, device,
                       desc=f"{size} distractors")
        results["sizes"][str(size)] = res
        logger.info("%d distractors: rank-1 %.3f%%", size, 100 * res["rank1"])

    # 4. the official devkit on the same features
    if args.devkit:
        results["devkit"] = devkit_mod.run_devkit(
            args.devkit, os.path.join(devkit_features, "megaface"),
            os.path.join(devkit_features, "facescrub"), algo, os.path.join(out, f"devkit_{algo}"),
            cfg["sizes"], cfg["probe_list"], cfg["templatelists"], python=args.devkit_python,
            delete_matrices=args.devkit_delete_matrices,
            ld_library_path=args.devkit_ld_library_path,
        )

    atomic_write_bytes(json_path, json.dumps(results, indent=2).encode())
    plot_cmc(results, cmc_path)
    plot_roc(results, roc_path)
    print(format_table(results))
    if "devkit" in results:
        print(_devkit_summary(results["devkit"]))
    print(f"results: {json_path}")
    return results


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m eval.megaface.megaface_eval``."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    args = build_parser().parse_args(argv)
    env = extract.launch_env()
    if args.weights and os.path.isdir(args.weights):
        run_folder(args, env)
    else:
        run(args, env=env)
    extract.finish_distributed(env)
    return 0


def step_scores(results: dict) -> dict[str, float]:
    """The numbers compared across steps: rank-1 and TAR at the first FAR, largest distractor set."""
    size = max(results["sizes"], key=int)
    res = results["sizes"][size]
    scores = {f"rank-1@{size}": res["rank1"]}
    if res["verification"]["far"]:
        scores[f"TAR@{res['verification']['far'][0]:g}@{size}"] = res["verification"]["tar"][0]
    return scores


def run_folder(args: argparse.Namespace, env: DistEnv | None = None) -> dict:
    """Evaluate every per-step weight file of a run folder (cached), report each step and the best.

    Under torchrun the other ranks embed the files rank 0 announces and return {}.
    """
    steps = require_step_weights(args.weights)
    cfg = _resolve(args)  # the inputs are checked once, before any extraction
    lists = [cfg["probe_list"], *(cfg["noises"] or ())]
    settings = settings_key({
        "sizes": cfg["sizes"], "fars": args.fars, "max_rank": args.max_rank, "flip": not args.no_flip,
        "network": args.network, "width": args.width, "distractor_set": args.distractor_set,
        **optional_settings(channel_order=args.channel_order),
        "seed": args.seed, "roots": [os.path.abspath(args.facescrub_root), os.path.abspath(args.megaface_root)],
        "lists": [{"path": os.path.abspath(p), **file_stamp(p)} for p in lists],
    })
    os.makedirs(args.output, exist_ok=True)
    cache = ResultCache(os.path.join(args.output, "megaface_steps_cache.json"))

    def evaluate(path: str) -> dict[str, float]:
        one = copy.copy(args)
        stem = default_algo(path)
        # each step's features and results under its own algo; results follow the weights
        one.weights, one.algo, one.overwrite_results = path, f"{args.algo}-{stem}" if args.algo else stem, True
        results = run(one, env=env)
        return step_scores(results) if results else {}

    rows = extract.steps_on_ranks(env, evaluate, lambda ev: evaluate_steps(steps, cache, settings, ev,
                                                                           refresh=args.force))
    if rows is None:  # a rank other than 0
        return {}
    return report_steps(f"MegaFace per step (%), {args.weights}", rows,
                        os.path.join(args.output, "megaface_steps.json"), digits=3,
                        run_folder=os.path.abspath(args.weights))


if __name__ == "__main__":
    run_cli(main)
