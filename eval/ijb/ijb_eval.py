"""IJB-B / IJB-C evaluation of one checkpoint: 1:1 verification and 1:N identification.

    python -m eval.ijb.ijb_eval --weights W [--network N] --data-root DIR --target IJBC \\
        --output OUT [--mode 1v1|1vN|both] [--test-modes N1D1F1,N0D0F0|all]

Image features (and their mirrors) are cached in OUT/cache, keyed by the weights file (path,
size, mtime), the network and the image list, so a re-run skips extraction; 1:1 scores are
cached there too. Results: a table on stdout, OUT/<TARGET>_<name>_<mode>.json and PNG plots.

``--weights`` may be a run folder: each per-step weight file (``backbone-<step>.pth``,
``<step>model.pth``, ``checkpoint-<step>.pt``) is evaluated as above under its own name, its
summary numbers (TAR at FAR 1e-5 and 1e-4 per test mode, closed-set rank-1) are cached in
OUT/<TARGET>_steps_cache.json so a re-run evaluates only new or changed files, and
OUT/<TARGET>_steps_<mode>.json and the printed table give every step and the best one.

Under ``torchrun --nproc_per_node=N`` each process (one GPU each where CUDA exists) embeds a
share of the images (eval.extract: the same batches as one process, so the same features);
rank 0 alone scores and writes the outputs and caches.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import sys
import time

import numpy as np

from eval import extract
from eval.ijb import metrics, report
from eval.ijb.data import IJBAlignedFaces, IJBMeta, load_meta, load_meta_1n
from eval.steps import ResultCache, evaluate_steps, file_stamp, optional_settings, report_steps, settings_key
from utils.checkpoint import add_channel_order_argument
from utils.cli import run_cli
from utils.distributed import DistEnv, broadcast_object
from utils.fileio import atomic_path, refuse_overwrite
from utils.run_files import require_step_weights

log = logging.getLogger("eval.ijb")

MODES = ("1v1", "1vN", "both")
# TPIR-vs-FPIR curve points for the plot (the table uses metrics.FPIRS)
CURVE_FPIRS = tuple(float(f"{x:.6g}") for x in np.logspace(-4, 0, 41))
# the FARs compared across the steps of a run folder (papers quote TAR@FAR=1e-4 for IJB-B/C)
STEP_FARS = (1e-5, 1e-4)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Command-line options."""
    p = argparse.ArgumentParser(
        prog="python -m eval.ijb.ijb_eval",
        description="IJB-B/IJB-C 1:1 verification (TAR@FAR) and 1:N identification "
        "(CMC, TPIR@FPIR) of one checkpoint.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--weights", required=True,
                   help="checkpoint (.pt/.pth in any layout utils.checkpoint reads) or .onnx, or a "
                   "run folder (every per-step weight file in it)")
    p.add_argument("--network", default=None,
                   help="backbone name; read from our checkpoints when omitted")
    p.add_argument("--width", type=int, default=None,
                   help="backbone width (only for checkpoints without metadata)")
    add_channel_order_argument(p)
    p.add_argument("--data-root", required=True,
                   help="folder holding IJBC/ and/or IJBB/ (or the release folder itself)")
    p.add_argument("--target", default="IJBC", type=str.upper, choices=["IJBC", "IJBB"])
    p.add_argument("--output", required=True, help="output folder (results, plots, cache/)")
    p.add_argument("--mode", default="1v1", choices=MODES)
    p.add_argument("--test-modes", default="N1D1F1",
                   help="comma list of N{0,1}D{0,1}F{0,1} (norm score, detector score, flip "
                   "test) or 'all'")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--num-workers", type=int, default=min(4, os.cpu_count() or 1),
                   help="threads reading and aligning images")
    p.add_argument("--device", default=None, help="cuda, cuda:1, cpu (default: cuda if available)")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction, default=None,
                   help="mixed precision (default: on for CUDA)")
    p.add_argument("--name", default=None,
                   help="name in tables and file names (default: the weights file stem)")
    p.add_argument("--force", action="store_true", help="overwrite existing result files")
    p.add_argument("--no-cache", action="store_true",
                   help="recompute features and scores even if cached")
    args = p.parse_args(argv)
    if args.test_modes.strip().lower() == "all":
        args.test_modes = list(metrics.TEST_MODES)
    else:
        args.test_modes = [m.strip().upper() for m in args.test_modes.split(",") if m.strip()]
    for m in args.test_modes:
        try:
            metrics.parse_test_mode(m)
        except ValueError as e:
            p.error(str(e))
    if args.batch_size < 1 or args.num_workers < 0:
        p.error("--batch-size must be >= 1 and --num-workers >= 0")
    return args


# ---------------------------------------------------------------- features


def feature_cache_key(args: argparse.Namespace, meta: IJBMeta) -> tuple[str, dict]:
    """Hash of what determines the image features: weights file, network, image list, AMP."""
    weights = os.path.abspath(args.weights)
    info = {
        "weights": weights,
        "weights_stamp": file_stamp(weights),
        "network": args.network,
        "width": args.width,
        "amp": args.amp,
        "target": meta.paths.target,
        "image_list": os.path.abspath(meta.paths.name_5pts_score),
        "image_list_stamp": file_stamp(meta.paths.name_5pts_score),
        "image_size": 112,
        **optional_settings(channel_order=args.channel_order),
    }
    return settings_key(info), info


def extract_features(
    embedder, dataset: IJBAlignedFaces, batch_size: int = 128, num_workers: int = 2,
    env: DistEnv | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Embeddings of every aligned face and of its mirror image, float32 (N, D) each.

    ``num_workers`` threads read and align the images (eval.faces.iter_batches) while the
    embedder runs the previous batch on its device (eval.embedder's flip test); under torchrun
    each rank embeds its share and every rank gets all of them (eval.extract).
    """
    return extract.extract_features(embedder, dataset, batch_size, flip=True, env=env,
                                    workers=num_workers, desc="IJB features")


def load_embedder(args: argparse.Namespace):
    """The Embedder for ``--weights`` (imported here: importing eval.ijb must stay light)."""
    from eval.embedder import Embedder

    kwargs = {} if args.width is None else {"width": args.width}
    return Embedder.load(args.weights, network=args.network, device=args.device,
                         batch_size=args.batch_size, amp=args.amp, channel_order=args.channel_order, **kwargs)


def cached_features(path: str, meta: IJBMeta) -> tuple[np.ndarray, np.ndarray] | None:
    """(embs, embs_flip) of the feature cache ``path``, or None when it is missing or stale."""
    if not os.path.exists(path):
        return None
    with np.load(path, allow_pickle=False) as z:
        embs, embs_flip = z["embs"], z["embs_flip"]
    if len(embs) != len(meta.names):
        log.warning("features: %s holds %d rows for %d images; re-extracting",
                    path, len(embs), len(meta.names))
        return None
    log.info("features: loaded from cache %s (%d images)", path, len(embs))
    return embs, embs_flip


def features(
    args: argparse.Namespace, meta: IJBMeta, cache_dir: str, env: DistEnv | None = None
) -> tuple[np.ndarray | None, np.ndarray | None, str, bool]:
    """(embs, embs_flip, cache path, loaded_from_cache): extract once, then reuse the cache.

    Under torchrun rank 0 reads and writes the cache; the other ranks embed their share when it
    extracts, and get None features when it reads the cache.
    """
    key, info = feature_cache_key(args, meta)
    path = os.path.join(cache_dir, f"{meta.paths.target}_{args.name}_features_{key}.npz")
    main = env is None or env.is_main
    cached = cached_features(path, meta) if main and not args.no_cache else None
    # every rank must take the same branch: extraction is collective
    if env is not None and broadcast_object(env, cached is not None):
        return (*(cached or (None, None)), path, True)
    if cached is not None:
        return (*cached, path, True)
    embedder = load_embedder(args)
    dataset = IJBAlignedFaces(meta.paths.image_dir, meta.names, meta.landmarks)
    log.info("features: extracting %d images with %s (batch %d, %d workers)",
             len(dataset), args.weights, args.batch_size, args.num_workers)
    t0 = time.time()
    embs, embs_flip = extract_features(embedder, dataset, args.batch_size, args.num_workers, env)
    seconds = max(time.time() - t0, 1e-9)
    log.info("features: %.1f s, %.0f images/s (mirrors included)",
             seconds, 2 * len(dataset) / seconds)
    if not main:
        return embs, embs_flip, path, False
    os.makedirs(cache_dir, exist_ok=True)
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, embs=embs, embs_flip=embs_flip, key_info=json.dumps(info))
    return embs, embs_flip, path, False


# ---------------------------------------------------------------- protocols


def template_features(meta: IJBMeta, embs: np.ndarray, embs_flip: np.ndarray, mode: str):
    """(template_norm_feats, unique_templates) for one test mode."""
    switches = metrics.parse_test_mode(mode)
    feats = metrics.image_input_features(embs, embs_flip, meta.faceness, **switches)
    return metrics.image2template_feature(feats, meta.templates, meta.medias)


def scores_1v1(args, meta: IJBMeta, embs, embs_flip, cache_path: str) -> dict[str, np.ndarray]:
    """1:1 pair scores per test mode, cached beside the features."""
    cached: dict[str, np.ndarray] = {}
    if os.path.exists(cache_path) and not args.no_cache:
        with np.load(cache_path, allow_pickle=False) as z:
            cached = {k: z[k] for k in z.files if len(z[k]) == len(meta.p1)}
    out, new = {}, False
    for mode in args.test_modes:
        if mode in cached:
            log.info("1:1 %s: scores loaded from cache %s", mode, cache_path)
            out[mode] = cached[mode]
            continue
        feats, templates = template_features(meta, embs, embs_flip, mode)
        out[mode] = metrics.verification(feats, templates, meta.p1, meta.p2)
        new = True
    if new:
        with atomic_path(cache_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, **{**cached, **out})
    return out


def run_1v1(args, meta: IJBMeta, scores: dict[str, np.ndarray], png: str) -> dict:
    """TAR@FAR per test mode: table on stdout, ROC plot, JSON section (returned)."""
    results, curves, rows = {}, {}, []
    for mode, score in scores.items():
        r = metrics.evaluate_1v1(meta.label, score)
        curves[f"{args.name} {mode}"] = (r.pop("fpr"), r.pop("tpr"), r["auc"])
        results[mode] = r
        tars = [report.pct(v) for v in r["tar_at_far"].values()]
        rows.append([f"{args.name}-{meta.paths.target} {mode}", *tars, report.pct(r["auc"])])
    header = ["Methods", *[f"{x:g}" for x in metrics.FARS], "AUC"]
    n_pos = int(meta.label.sum())
    print(f"\n{meta.paths.target} 1:1 verification, TAR (%) at FAR "
          f"({n_pos} genuine / {len(meta.label) - n_pos} impostor pairs)")
    print(report.format_table(header, rows))
    report.plot_roc(curves, f"ROC on {meta.paths.target}", png)
    return results


def _at_table_fpirs(result: dict) -> dict:
    """A 1:N result with TPIR and thresholds kept at the table's FPIRs only (for the JSON)."""
    keep = {f"{f:g}" for f in metrics.FPIRS}
    out = dict(result)
    for key in ("tpir_at_fpir", "threshold"):
        if key in out:
            out[key] = {k: v for k, v in out[key].items() if k in keep}
    return out


def identify(lists, feats, templates, fpirs) -> tuple[str, dict, dict]:
    """1:N for one set of template features -> (gallery label, closed result, open results)."""
    probe_feats, _, probe_ids = metrics.select_templates(
        feats, templates, *lists.probe, what="1:N probe list")
    gals = {g: metrics.select_templates(feats, templates, *lst, what=f"1:N gallery {g}")
            for g, lst in lists.galleries.items()}
    # insightface: a single gallery made of G1 and G2 (S1 and S2) together
    label = "+".join(gals)
    both_feats = np.concatenate([g[0] for g in gals.values()])
    both_ids = np.concatenate([g[2] for g in gals.values()])
    closed = metrics.identification_closed(probe_feats, probe_ids, both_feats, both_ids,
                                           fpirs=fpirs)
    opened = {name: metrics.identification_open(probe_feats, probe_ids, g[0], g[2], fpirs=fpirs)
              for name, g in gals.items()}
    opened["mean"] = metrics.combine_open(opened, len(probe_ids))
    return label, closed, opened


def run_1vn(args, meta: IJBMeta, embs, embs_flip, png: str) -> dict:
    """Closed-set (insightface, G1+G2) and per-gallery open-set identification per test mode."""
    lists = load_meta_1n(meta.paths)
    fpirs = tuple(sorted(set(metrics.FPIRS) | set(CURVE_FPIRS)))
    results, cmc, curves, rows = {}, {}, {}, []
    for mode in args.test_modes:
        feats, templates = template_features(meta, embs, embs_flip, mode)
        label, closed, opened = identify(lists, feats, templates, fpirs)
        results[mode] = {
            f"closed_{label}": _at_table_fpirs(closed),
            "open": {g: _at_table_fpirs(r) for g, r in opened.items()},
        }
        named = [(f"{label} closed (insightface)", closed)]
        named += [(f"{g} open", r) for g, r in opened.items() if g != "mean"]
        named += [("mean open (ContraFace)", opened["mean"])]
        for name, r in named:
            if "cmc" in r:  # the mean has no curves
                cmc[f"{mode} {name}"] = r["cmc"]
                curves[f"{mode} {name}"] = (fpirs, [r["tpir_at_fpir"][f"{f:g}"] for f in fpirs])
            ranks = [report.pct(r["rank"][str(k)]) for k in metrics.RANKS]
            tpirs = [report.pct(r["tpir_at_fpir"][f"{f:g}"]) for f in metrics.FPIRS]
            rows.append([f"{args.name} {mode} {name}", *ranks, *tpirs])
    header = ["Methods", *[f"rank-{k}" for k in metrics.RANKS],
              *[f"TPIR@FPIR={f:g}" for f in metrics.FPIRS]]
    n_probes = len(np.unique(lists.probe[0]))
    print(f"\n{meta.paths.target} 1:N identification (%), {n_probes} mixed probe templates")
    print(report.format_table(header, rows))
    report.plot_1vn(cmc, curves, f"{meta.paths.target} 1:N", png)
    return results


# ---------------------------------------------------------------- entry point


def main(argv: list[str] | None = None) -> dict:
    """Run the evaluation; returns the results written to the JSON file."""
    args = parse_args(argv)
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="[%(asctime)s] %(message)s",
                            stream=sys.stdout)
    if not os.path.exists(args.weights):
        raise FileNotFoundError(f"--weights: no such file {args.weights}")
    env = extract.launch_env()
    if os.path.isdir(args.weights):
        results = evaluate_run_folder(args, env)
    else:
        results = evaluate_file(args, env)
    extract.finish_distributed(env)
    return results


def step_scores(results: dict) -> dict[str, float]:
    """The numbers compared across steps: TAR at FAR 1e-5 and 1e-4 per test mode, closed-set rank-1."""
    scores = {}
    for mode, r in results.get("1v1", {}).items():
        for far in STEP_FARS:
            scores[f"{mode} TAR@{far:g}"] = r["tar_at_far"][f"{far:g}"]
    for mode, r in results.get("1vN", {}).items():
        closed = next(v for k, v in r.items() if k.startswith("closed_"))
        scores[f"{mode} rank-1"] = closed["rank"]["1"]
    return scores


def evaluate_run_folder(args: argparse.Namespace, env: DistEnv | None = None) -> dict:
    """Evaluate every per-step weight file of a run folder (cached), report each step and the best.

    Under torchrun the other ranks embed the files rank 0 announces and return {}.
    """
    steps = require_step_weights(args.weights)
    meta = load_meta(args.data_root, args.target)  # checked once, before any extraction
    target = meta.paths.target
    files = [meta.paths.name_5pts_score, meta.paths.pair_label]
    settings = settings_key({
        "target": target, "mode": args.mode, "test_modes": args.test_modes, "network": args.network,
        "width": args.width, "amp": args.amp, **optional_settings(channel_order=args.channel_order),
        "data": [{"path": os.path.abspath(f), **file_stamp(f)} for f in files],
    })
    os.makedirs(args.output, exist_ok=True)
    cache = ResultCache(os.path.join(args.output, f"{target}_steps_cache.json"))

    def evaluate(path: str) -> dict[str, float]:
        one = copy.copy(args)
        # the per-step result files are this folder's: rewritten whenever the weights change
        one.weights, one.name, one.force = path, os.path.splitext(os.path.basename(path))[0], True
        return step_scores(evaluate_file(one, env))

    rows = extract.steps_on_ranks(env, evaluate, lambda ev: evaluate_steps(steps, cache, settings, ev,
                                                                           refresh=args.no_cache))
    if rows is None:  # a rank other than 0
        return {}
    return report_steps(
        f"{target} per step (%), {args.weights}", rows, os.path.join(args.output, f"{target}_steps_{args.mode}.json"),
        target=target, run_folder=os.path.abspath(args.weights), mode=args.mode, test_modes=args.test_modes,
    )


def evaluate_file(args: argparse.Namespace, env: DistEnv | None = None) -> dict:
    """Evaluate one weights file (``args.weights``); returns the results written to the JSON file.

    Under torchrun ranks other than 0 embed their share of the images and return {}.
    """
    args.name = args.name or os.path.splitext(os.path.basename(args.weights))[0]
    meta = load_meta(args.data_root, args.target)
    target = meta.paths.target
    stem = os.path.join(args.output, f"{target}_{args.name}")
    outputs = [f"{stem}_{args.mode}.json"]
    if args.mode in ("1v1", "both"):
        outputs.append(f"{stem}_roc.png")
    if args.mode in ("1vN", "both"):
        outputs.append(f"{stem}_1vN.png")
    refuse_overwrite(outputs, args.force)  # before hours of extraction, not after
    cache_dir = os.path.join(args.output, "cache")
    os.makedirs(cache_dir, exist_ok=True)
    log.info("%s: %d images, %d templates, %d pairs", target, len(meta.names),
             len(np.unique(meta.templates)), len(meta.p1))

    embs, embs_flip, feat_path, from_cache = features(args, meta, cache_dir, env)
    if env is not None and not env.is_main:
        return {}  # rank 0 scores and writes
    results = {
        "target": target,
        "name": args.name,
        "weights": os.path.abspath(args.weights),
        "network": args.network,
        "data_root": os.path.abspath(meta.paths.root),
        "num_images": len(meta.names),
        "num_templates": int(len(np.unique(meta.templates))),
        "embedding_size": int(embs.shape[1]),
        "feature_cache": feat_path,
        "features_from_cache": from_cache,
        "test_modes": args.test_modes,
    }
    if args.mode in ("1v1", "both"):
        # scores also depend on the pair list
        pairs_key = settings_key(file_stamp(meta.paths.pair_label))[:8]
        score_path = feat_path.replace("_features_", "_scores_")
        score_path = score_path.replace(".npz", f"_{pairs_key}.npz")
        scores = scores_1v1(args, meta, embs, embs_flip, score_path)
        results["1v1"] = run_1v1(args, meta, scores, outputs[1])
        results["num_pairs"] = int(len(meta.p1))
        results["score_cache"] = score_path
    if args.mode in ("1vN", "both"):
        results["1vN"] = run_1vn(args, meta, embs, embs_flip, outputs[-1])
    with atomic_path(outputs[0]) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=2)
    print(f"\nresults: {outputs[0]}; plots: {', '.join(outputs[1:])}")
    return results


if __name__ == "__main__":
    run_cli(main)
