"""Evaluate checkpoints on the verification bins (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW).

    python -m eval.evaluation --weights work_dirs/ms1mv2_r100 --data-dir data/faces_emore \\
        --targets lfw,cfp_fp,agedb_30,calfw,cplfw --batch-size 128 --output results.json

``--weights`` is one checkpoint or a folder; every ``*.pt``, ``*.pth`` and ``*.onnx`` in it is
evaluated (this project's checkpoints, ContraFace ``{step}model.pth``, insightface
``backbone.pth``, ONNX exports). In a run folder each step is evaluated once (its
``backbone-<step>.pth`` rather than its ``checkpoint-<step>.pt``), the results are cached per
file and target in ``FOLDER/verification_results.json`` (a re-run evaluates only new files or
targets) and the best step per target and by the mean is reported. Each ``.bin`` needed is
decoded once for all checkpoints. Torch models
go through ``eval.verification.test``; ONNX models through the Embedder with the same flip
protocol (embedding of the image + embedding of its mirror) and ``eval.verification.evaluate``.
With several GPUs the targets are spread over them (one thread and one model copy per GPU).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import re
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Sequence

import numpy as np
import sklearn.preprocessing
import torch
from torch import nn
from tqdm import tqdm

from eval import verification
from eval.embedder import Embedder, load_backbone
from eval.steps import ResultCache, best_steps, format_steps, settings_key
from utils.checkpoint import CheckpointError
from utils.run_files import is_step_weights, list_step_weights, step_from_filename
from utils.cli import UsageError, run_cli
from utils.fileio import atomic_path, refuse_overwrite

__all__ = [
    "DEFAULT_TARGETS",
    "CHECKPOINT_SUFFIXES",
    "find_checkpoints",
    "load_targets",
    "verify_embeddings",
    "evaluate_onnx",
    "evaluate_module",
    "evaluate_checkpoints",
    "format_table",
    "main",
]

log = logging.getLogger("eval.evaluation")

DEFAULT_TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".onnx")
CACHE_NAME = "verification_results.json"
METRICS = ("acc1", "std1", "acc2", "std2", "xnorm")


def _natural_key(name: str) -> list:
    """Sort 2000model.pth before 10000model.pth."""
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def find_checkpoints(weights: str) -> list[str]:
    """The checkpoint itself, or a folder's files: one per step (step order), then the other
    *.pt / *.pth / *.onnx files (natural order)."""
    if os.path.isfile(weights):
        return [weights]
    if not os.path.isdir(weights):
        raise FileNotFoundError(f"--weights {weights}: no such file or folder")
    steps = [path for _, path in list_step_weights(weights)]
    others = [
        os.path.join(weights, name)
        for name in os.listdir(weights)
        if name.lower().endswith(CHECKPOINT_SUFFIXES) and not is_step_weights(name)
        and os.path.isfile(os.path.join(weights, name))
    ]
    if not steps and not others:
        raise FileNotFoundError(
            f"--weights {weights}: folder holds no {'/'.join(CHECKPOINT_SUFFIXES)} files"
        )
    return steps + sorted(others, key=lambda p: _natural_key(os.path.basename(p)))


def target_settings(
    data_dir: str, targets: Sequence[str], nfolds: int, image_size: Sequence[int], model: dict
) -> dict[str, str]:
    """Cache key per target: the .bin file (path, size, mtime), the protocol and the model options."""
    keys = {}
    for target in targets:
        path = os.path.abspath(os.path.join(data_dir, f"{target}.bin"))
        st = os.stat(path)
        keys[target] = settings_key({
            "target": target, "bin": path, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
            "nfolds": nfolds, "image_size": list(image_size), **model,
        })
    return keys


def load_targets(
    data_dir: str, targets: Sequence[str], image_size: tuple[int, int] = (112, 112)
) -> tuple[dict[str, tuple[list[torch.Tensor], list[bool]]], list[str]]:
    """Decode ``{data_dir}/{target}.bin`` for each target that exists; return (sets, missing)."""
    sets, missing = {}, []
    for target in targets:
        path = os.path.join(data_dir, f"{target}.bin")
        if not os.path.isfile(path):
            missing.append(target)
            continue
        sets[target] = verification.load_bin(path, image_size, progress=True)
    if missing:
        names = ", ".join(f"{t}.bin" for t in missing)
        log.warning("missing verification bins in %s (skipped): %s", data_dir, names)
    return sets, missing


def verify_embeddings(
    embeddings_list: Sequence[np.ndarray], issame: Sequence[bool], nfolds: int = 10
) -> dict:
    """verification.test's metrics from [embeddings, mirrored embeddings] (same arithmetic)."""
    # test() accumulates float64 embeddings; do the same so both paths give the same numbers.
    embeddings_list = [np.asarray(e, dtype=np.float64) for e in embeddings_list]
    xnorm = float(np.mean(np.concatenate([np.linalg.norm(e, axis=1) for e in embeddings_list])))
    plain = sklearn.preprocessing.normalize(embeddings_list[0])
    _, _, acc, _, _, _ = verification.evaluate(plain, issame, nfolds)
    acc1, std1 = float(np.mean(acc)), float(np.std(acc))
    flip = sklearn.preprocessing.normalize(embeddings_list[0] + embeddings_list[1])
    _, _, acc, _, _, _ = verification.evaluate(flip, issame, nfolds)
    acc2, std2 = float(np.mean(acc)), float(np.std(acc))
    return {"acc1": acc1, "std1": std1, "acc2": acc2, "std2": std2, "xnorm": xnorm}


def evaluate_onnx(
    embedder: Embedder, data_set: tuple[list[torch.Tensor], list[bool]], nfolds: int = 10
) -> dict:
    """Metrics of an Embedder (e.g. ONNX) on one loaded bin with the flip protocol."""
    data_list, issame = data_set
    return verify_embeddings([embedder(data) for data in data_list], issame, nfolds)


def evaluate_module(
    backbone: nn.Module,
    data_set: tuple[list[torch.Tensor], list[bool]],
    batch_size: int,
    nfolds: int,
    device: torch.device,
    amp: bool,
    progress: bool = False,
) -> dict:
    """Metrics of a backbone (already on ``device``) on one loaded bin, via verification.test."""
    acc1, std1, acc2, std2, xnorm, _ = verification.test(
        data_set, backbone, batch_size, nfolds, device=device, amp=amp, progress=progress
    )
    return {"acc1": acc1, "std1": std1, "acc2": acc2, "std2": std2, "xnorm": xnorm}


def _devices(device: str) -> list[torch.device]:
    """The devices to spread targets over: every visible GPU for 'cuda', else the one named."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device(device)]


def _evaluate_torch(
    backbone: nn.Module,
    sets: dict,
    devices: list[torch.device],
    batch_size: int,
    nfolds: int,
    amp: bool,
    bar: tqdm,
) -> dict[str, dict]:
    """All targets for one backbone; targets round-robin over devices, one thread per device."""
    targets = list(sets)
    lock = threading.Lock()

    def run(worker: int) -> dict[str, dict]:
        device = devices[worker]
        # A private copy per device: threads must not share a module that is being moved.
        model = (copy.deepcopy(backbone) if len(devices) > 1 else backbone).to(device).eval()
        out = {}
        for target in targets[worker :: len(devices)]:
            out[target] = evaluate_module(
                model, sets[target], batch_size, nfolds, device, amp and device.type == "cuda",
                progress=len(devices) == 1,
            )
            with lock:
                bar.update(1)
        return out

    workers = min(len(devices), len(targets))
    if workers <= 1:
        return run(0)
    results: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(run, range(workers)):
            results.update(part)
    return {t: results[t] for t in targets}


def evaluate_checkpoints(
    checkpoints: Sequence[str],
    sets: dict,
    network: str | None = None,
    network_kwargs: dict[str, Any] | None = None,
    batch_size: int = 128,
    nfolds: int = 10,
    device: str = "auto",
    amp: bool = False,
    skip_unloadable: bool = False,
    cache: ResultCache | None = None,
    cache_keys: dict[str, str] | None = None,
) -> list[dict]:
    """Evaluate each checkpoint on every loaded set; one result record per checkpoint.

    With a ``cache`` (and ``cache_keys``, one per target), a (checkpoint, target) found there is
    taken from it, and only the rest is evaluated and added; ``sets`` need only hold the targets
    some checkpoint still lacks, in the order of ``cache_keys``.
    """
    devices = _devices(device)
    records = []
    targets = list(cache_keys) if cache_keys else list(sets)
    bar = tqdm(total=len(checkpoints) * len(targets), desc="evaluating", unit="set")
    for path in checkpoints:
        record: dict[str, Any] = {"checkpoint": path, "name": os.path.basename(path)}
        cached = {}
        if cache is not None and cache_keys:
            for target in targets:
                hit = cache.get(path, cache_keys[target])
                if hit is not None:
                    cached[target] = hit
        todo = {t: sets[t] for t in targets if t not in cached}
        if not todo:
            entry = cache.get(path, "meta") or {}
            record.update(entry, step=entry.get("step", step_from_filename(path)))
            _finish(record, {t: cached[t] for t in targets}, cached=len(cached))
            bar.update(len(targets))
            records.append(record)
            continue
        bar.update(len(cached))
        try:
            if path.lower().endswith(".onnx"):
                model: Embedder | nn.Module = Embedder.from_onnx(
                    path, batch_size=batch_size, device=str(devices[0])
                )
                record.update(network="onnx", step=step_from_filename(path), format="onnx")
            else:
                model, meta = load_backbone(path, network, **(network_kwargs or {}))
                record.update(
                    network=meta["network"],
                    network_kwargs=meta["network_kwargs"],
                    step=meta.get("step", step_from_filename(path)),
                    format=meta.get("format"),
                )
        except (CheckpointError, ValueError) as exc:
            if not skip_unloadable:
                raise
            # A folder may hold files that are not backbones (e.g. ElasticFace {step}header.pth).
            log.warning("skipping %s: %s", path, exc)
            record["error"] = str(exc)
            bar.update(len(todo))
            records.append(record)
            continue
        if isinstance(model, Embedder):
            results = {}
            for target, data_set in todo.items():
                results[target] = evaluate_onnx(model, data_set, nfolds)
                bar.update(1)
        else:
            results = _evaluate_torch(model, todo, devices, batch_size, nfolds, amp, bar)
        if cache is not None and cache_keys:
            meta_keys = ("network", "network_kwargs", "step", "format")
            cache.put(path, "meta", {k: record[k] for k in meta_keys if k in record})
            for target, result in results.items():
                cache.put(path, cache_keys[target], result)
        _finish(record, {t: cached[t] if t in cached else results[t] for t in targets}, len(cached))
        records.append(record)
        tqdm.write(
            f"{record['name']}: "
            + ", ".join(f"{t} {r['acc2'] * 100:.2f}" for t, r in record["results"].items())
            + (f", mean {record['mean_acc2'] * 100:.2f}" if record["results"] else "")
        )
    bar.close()
    return records


def _finish(record: dict, results: dict[str, dict], cached: int) -> None:
    """Store a checkpoint's per-target results, their mean accuracy and how many came from the cache."""
    record["results"] = results
    accuracies = [r["acc2"] for r in results.values()]
    record["mean_acc2"] = float(np.mean(accuracies)) if accuracies else None
    record["cached_targets"] = cached


def best_of(records: Sequence[dict], targets: Sequence[str]) -> dict[str, dict]:
    """The best checkpoint per target and by the mean of the targets (accuracy with flip)."""
    return best_steps(_score_rows(records, targets), targets)


def _score_rows(records: Sequence[dict], targets: Sequence[str]) -> list[dict]:
    return [
        {"step": r.get("step"), "name": r["name"], "scores": {t: r["results"][t]["acc2"] for t in targets}}
        for r in records if "results" in r
    ]


def format_table(records: Sequence[dict], targets: Sequence[str]) -> str:
    """Checkpoint x target table of accuracy-flip (%), with the mean over targets."""
    header = ["checkpoint", *targets, "mean"]
    rows = []
    for rec in records:
        if "error" in rec:
            rows.append([rec["name"], *(["-"] * len(targets)), "error"])
            continue
        cells = [f"{rec['results'][t]['acc2'] * 100:.2f}" for t in targets]
        mean = rec.get("mean_acc2")
        rows.append([rec["name"], *cells, "-" if mean is None else f"{mean * 100:.2f}"])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence) -> str:
        # checkpoint names left-aligned, numbers right-aligned
        padded = [str(c).rjust(w) for c, w in zip(cells, widths)]
        padded[0] = str(cells[0]).ljust(widths[0])
        return "  ".join(padded)

    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def build_parser() -> argparse.ArgumentParser:
    """Command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m eval.evaluation",
        description="Verification accuracy (10-fold, with flip) of checkpoints.",
    )
    p.add_argument(
        "--weights", required=True, help="a checkpoint (.pt/.pth/.onnx) or a folder of them"
    )
    p.add_argument("--data-dir", required=True, help="folder with the verification .bin files")
    p.add_argument("--network", default=None,
                   help="backbone name (e.g. iresnet50); default: read from our checkpoints or "
                        "inferred from the weights' layout")
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated bin names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--nfolds", type=int, default=10)
    p.add_argument("--image-size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (all GPUs) or cuda:N")
    p.add_argument("--amp", action="store_true", help="autocast (fp16) on CUDA; default fp32")
    p.add_argument("--width", type=int, default=None, help="iresnet width (default 64)")
    p.add_argument("--num-features", type=int, default=None, help="embedding size (default 512)")
    p.add_argument("--use-se", action="store_true", help="iresnet with squeeze-and-excitation")
    p.add_argument("--output", default=None, help="write the results as JSON here")
    p.add_argument("--force", action="store_true", help="overwrite --output")
    p.add_argument("--no-cache", action="store_true",
                   help=f"for a folder: evaluate every file again (and refresh FOLDER/{CACHE_NAME})")
    return p


def main(argv: Sequence[str] | None = None) -> dict:
    """Run the CLI; return the JSON-able results."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if args.batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.output:
        refuse_overwrite([args.output], args.force)  # fail before any work is done
    targets = [t.strip() for t in args.targets.split(",") if t.strip()]
    if not targets:
        raise UsageError("--targets is empty")
    checkpoints = find_checkpoints(args.weights)
    present = [t for t in targets if os.path.isfile(os.path.join(args.data_dir, f"{t}.bin"))]
    missing = [t for t in targets if t not in present]
    if not present:
        raise FileNotFoundError(
            f"none of the targets ({', '.join(targets)}) has a .bin in {args.data_dir}"
        )
    kwargs = {"width": args.width, "num_features": args.num_features}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if args.use_se:
        kwargs["use_se"] = True
    folder = os.path.isdir(args.weights)
    cache = keys = None
    if folder:
        cache = ResultCache(os.path.join(args.weights, CACHE_NAME))
        model = {"network": args.network, "network_kwargs": kwargs, "amp": args.amp}
        keys = target_settings(args.data_dir, present, args.nfolds, args.image_size, model)
        if args.no_cache:
            cache.entries.clear()
    # decode only the bins some checkpoint still needs
    needed = [t for t in present if cache is None or any(cache.get(c, keys[t]) is None for c in checkpoints)]
    sets, _ = load_targets(args.data_dir, needed, tuple(args.image_size))
    records = evaluate_checkpoints(
        checkpoints, sets, args.network, kwargs, args.batch_size, args.nfolds, args.device,
        args.amp, skip_unloadable=folder, cache=cache, cache_keys=keys,
    )
    evaluated = present
    if folder:
        print(format_steps(_score_rows(records, evaluated), evaluated))
        skipped = [r["name"] for r in records if "error" in r]
        if skipped:
            print(f"skipped (not backbones): {', '.join(skipped)}")
    else:
        print(format_table(records, evaluated))
    result = {
        "targets": evaluated,
        "missing_targets": missing,
        "data_dir": args.data_dir,
        "nfolds": args.nfolds,
        "batch_size": args.batch_size,
        "device": args.device,
        "amp": args.amp,
        "checkpoints": records,
        "best": best_of(records, evaluated),
    }
    if args.output:
        with atomic_path(args.output) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        log.info("results written to %s", args.output)
    if all("error" in r for r in records):
        raise CheckpointError(f"{args.weights}: no checkpoint could be evaluated (see the warnings above)")
    return result


if __name__ == "__main__":
    run_cli(main)
