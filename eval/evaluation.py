"""Evaluate checkpoints on the verification bins (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW).

    python -m eval.evaluation --weights work_dirs/ms1mv2_r100 --data-dir data/faces_emore \\
        --targets lfw,cfp_fp,agedb_30,calfw,cplfw --batch-size 128 --output results.json

``--weights`` is one checkpoint or a folder; every ``*.pt``, ``*.pth`` and ``*.onnx`` in it is
evaluated (this project's checkpoints, ContraFace ``{step}model.pth``, insightface
``backbone.pth``, ONNX exports). In a run folder each step is evaluated once (its
``backbone-<step>.pth`` rather than its ``checkpoint-<step>.pt``) through eval.steps like the
IJB and MegaFace evaluators: the results are cached per file and target in
``FOLDER/verification_results.json`` (a re-run evaluates only new files or targets), files that
are not backbones are skipped, and the best step per target and by the mean is reported.

Each checkpoint is loaded (and so checked) before any ``.bin`` is decoded; each ``.bin`` is then
decoded once for all checkpoints. Torch models and ONNX models alike go through the one
evaluation path: eval.embedder (the flip test: embedding of the image + embedding of its mirror)
and ``eval.verification.verify``. With several GPUs the targets are spread over them (one thread
and one model copy per GPU).
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
import torch
from tqdm import tqdm

from eval import verification
from eval.embedder import Embedder, load_backbone
from eval.steps import ResultCache, best_steps, evaluate_steps, file_stamp, report_steps, settings_key
from utils.checkpoint import CheckpointError, add_channel_order_argument
from utils.cli import UsageError, run_cli
from utils.errors import UnknownNameError
from utils.fileio import atomic_path, refuse_overwrite
from utils.run_files import is_step_weights, list_step_weights, step_from_filename

__all__ = [
    "DEFAULT_TARGETS",
    "CHECKPOINT_SUFFIXES",
    "find_checkpoints",
    "load_targets",
    "load_model",
    "format_table",
    "main",
]

log = logging.getLogger("eval.evaluation")

DEFAULT_TARGETS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".onnx")
CACHE_NAME = "verification_results.json"
META = "meta"  # the cache's part for a checkpoint's network and step (read when it is loaded)

# one loaded .bin: uint8 (2P, 3, H, W) images and P issame flags (eval.verification.load_pairs)
VerificationSet = tuple[torch.Tensor, list[bool]]


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
    """Cache key per target: the .bin file (path and stamp), the protocol and the model options."""
    keys = {}
    for target in targets:
        path = os.path.abspath(os.path.join(data_dir, f"{target}.bin"))
        keys[target] = settings_key({
            "target": target, "bin": path, **file_stamp(path),
            "nfolds": nfolds, "image_size": list(image_size), **model,
        })
    return keys


def load_targets(
    data_dir: str,
    targets: Sequence[str],
    image_size: Sequence[int] = (112, 112),
    loaded: dict[str, VerificationSet] | None = None,
) -> dict[str, VerificationSet]:
    """``{target: load_pairs(data_dir/<target>.bin)}``; sets already in ``loaded`` are reused, new ones added to it."""
    loaded = {} if loaded is None else loaded
    for target in targets:
        if target not in loaded:
            path = os.path.join(data_dir, f"{target}.bin")
            loaded[target] = verification.load_pairs(path, image_size, progress=True)
    return {target: loaded[target] for target in targets}


def _devices(device: str) -> list[torch.device]:
    """The devices to spread targets over: every visible GPU for 'cuda', else the one named."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("--device cuda: no CUDA device is available")
        return [torch.device("cuda", i) for i in range(torch.cuda.device_count())]
    return [torch.device(device)]


def load_model(
    path: str,
    devices: Sequence[torch.device],
    network: str | None = None,
    network_kwargs: dict[str, Any] | None = None,
    batch_size: int = 128,
    amp: bool = False,
    image_size: Sequence[int] = (112, 112),
    channel_order: str | None = None,
) -> tuple[list[Embedder], dict[str, Any]]:
    """One checkpoint's embedders (a model copy per device; ONNX: one) and its metadata.

    Metadata: ``network``, ``network_kwargs``, ``step``, ``format``, ``channel_order``. ``amp``
    applies on CUDA only; ``channel_order`` as eval.embedder.load_backbone.
    """
    image_size = (int(image_size[0]), int(image_size[1]))
    if path.lower().endswith(".onnx"):
        embedder = Embedder.from_onnx(path, batch_size=batch_size, device=str(devices[0]))
        return [embedder], {"network": "onnx", "step": step_from_filename(path), "format": "onnx"}
    backbone, meta = load_backbone(path, network, channel_order, **(network_kwargs or {}))
    return _device_embedders(backbone, devices, batch_size, amp, image_size), {
        "network": meta["network"],
        "network_kwargs": meta["network_kwargs"],
        "step": meta.get("step", step_from_filename(path)),
        "format": meta.get("format"),
        "channel_order": meta["channel_order"],
    }


def _device_embedders(
    backbone: torch.nn.Module,
    devices: Sequence[torch.device],
    batch_size: int,
    amp: bool = False,
    image_size: tuple[int, int] = (112, 112),
) -> list[Embedder]:
    """An Embedder per device, each with its own copy of ``backbone`` when there are several."""
    return [
        # a private copy per device: threads must not share a module that is being moved
        Embedder.from_module(copy.deepcopy(backbone) if len(devices) > 1 else backbone, device=device,
                             batch_size=batch_size, amp=amp and device.type == "cuda", image_size=image_size)
        for device in devices
    ]


def _evaluate_sets(
    embedders: Sequence[Embedder], sets: dict[str, VerificationSet], nfolds: int, bar: tqdm
) -> dict[str, dict]:
    """Every set's metrics; sets round-robin over the embedders, one thread per embedder."""
    targets = list(sets)
    lock = threading.Lock()

    def run(worker: int) -> dict[str, dict]:
        embedder = embedders[worker]
        out = {}
        for target in targets[worker :: len(embedders)]:
            images, issame = sets[target]
            out[target], _ = verification.verify(embedder, images, issame, nfolds, embedder.batch_size,
                                                 progress=len(embedders) == 1)
            with lock:
                bar.update(1)
        return out

    workers = min(len(embedders), len(targets))
    if workers <= 1:
        return run(0)
    results: dict[str, dict] = {}
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for part in pool.map(run, range(workers)):
            results.update(part)
    return {t: results[t] for t in targets}


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
    add_channel_order_argument(p)
    p.add_argument("--targets", default=",".join(DEFAULT_TARGETS), help="comma-separated bin names")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--nfolds", type=int, default=10)
    p.add_argument("--image-size", type=int, nargs=2, default=(112, 112), metavar=("H", "W"))
    p.add_argument("--device", default="auto", help="auto, cpu, cuda (all GPUs) or cuda:N")
    p.add_argument("--amp", action="store_true",
                   help="autocast on CUDA (eval.embedder's policy: bf16 where supported, else fp16); "
                        "default fp32")
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
    if missing:
        names = ", ".join(f"{t}.bin" for t in missing)
        log.warning("missing verification bins in %s (skipped): %s", args.data_dir, names)
    kwargs = {"width": args.width, "num_features": args.num_features}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if args.use_se:
        kwargs["use_se"] = True
    devices = _devices(args.device)
    loaded: dict[str, VerificationSet] = {}  # each .bin decoded once, when a checkpoint first needs it
    evaluated: dict[str, list[str]] = {}  # the targets evaluated (not from the cache) per checkpoint
    bar = tqdm(total=len(checkpoints) * len(present), desc="evaluating", unit="set")

    def evaluate(path: str, parts: Sequence[str]) -> dict[str, Any]:
        """{"meta": the checkpoint's metadata, target: metrics} for the targets among ``parts``."""
        try:
            embedders, meta = load_model(path, devices, args.network, kwargs, args.batch_size, args.amp,
                                         args.image_size, args.channel_order)
        except UnknownNameError:  # --network names no backbone: a usage error, for every file
            raise
        except ValueError as exc:  # the network cannot be told (e.g. a folder's header file)
            raise CheckpointError(str(exc)) from exc
        wanted = [t for t in parts if t != META]
        results = _evaluate_sets(embedders, load_targets(args.data_dir, wanted, args.image_size, loaded),
                                 args.nfolds, bar)
        evaluated[path] = wanted
        if results:
            # the mean only where every target was evaluated now (cached ones are not shown)
            mean = np.mean([r["acc2"] for r in results.values()]) if len(results) == len(present) else None
            tqdm.write(f"{os.path.basename(path)}: "
                       + ", ".join(f"{t} {r['acc2'] * 100:.2f}" for t, r in results.items())
                       + ("" if mean is None else f", mean {mean * 100:.2f}"))
        return {META: meta, **results}

    folder = os.path.isdir(args.weights)
    if folder:
        cache = ResultCache(os.path.join(args.weights, CACHE_NAME))
        model = {"network": args.network, "network_kwargs": kwargs, "amp": args.amp}
        if args.channel_order:  # only when given: the cache keys of earlier runs stay valid
            model["channel_order"] = args.channel_order
        parts = {META: META, **target_settings(args.data_dir, present, args.nfolds, args.image_size, model)}
        steps = [(step_from_filename(path), path) for path in checkpoints]
        rows = evaluate_steps(steps, cache, parts, evaluate, refresh=args.no_cache, skip=(CheckpointError,))
    else:  # one file: its errors are errors
        scores = evaluate(checkpoints[0], [META, *present])
        rows = [{"step": step_from_filename(checkpoints[0]), "name": os.path.basename(checkpoints[0]),
                 "scores": scores}]
    bar.close()
    records = [_record(path, row, present, evaluated) for path, row in zip(checkpoints, rows)]
    if folder:
        best = report_steps(f"verification accuracy with flip (%) per step, {args.weights}",
                            _score_rows(records, present), None, metrics=present)["best"]
        skipped = [r["name"] for r in records if "error" in r]
        if skipped:
            print(f"skipped (not backbones): {', '.join(skipped)}")
    else:
        print(format_table(records, present))
        best = best_of(records, present)
    result = {
        "targets": present,
        "missing_targets": missing,
        "data_dir": args.data_dir,
        "nfolds": args.nfolds,
        "batch_size": args.batch_size,
        "device": args.device,
        "amp": args.amp,
        "checkpoints": records,
        "best": best,
    }
    if args.output:
        with atomic_path(args.output) as tmp, open(tmp, "w") as f:
            json.dump(result, f, indent=2)
        log.info("results written to %s", args.output)
    if all("error" in r for r in records):
        raise CheckpointError(f"{args.weights}: no checkpoint could be evaluated (see the warnings above)")
    return result


def _record(path: str, row: dict, targets: Sequence[str], evaluated: dict[str, list[str]]) -> dict:
    """One checkpoint's result record from its eval.steps row: metadata, per-target results, mean."""
    record: dict[str, Any] = {"checkpoint": path, "name": row["name"]}
    if "error" in row:
        record["error"] = row["error"]
        return record
    meta = row["scores"][META]
    record.update(meta, step=meta.get("step", row["step"]))
    _finish(record, {t: row["scores"][t] for t in targets}, len(targets) - len(evaluated.get(path, ())))
    return record


if __name__ == "__main__":
    run_cli(main)
