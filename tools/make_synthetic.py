"""Write the synthetic face dataset in the real formats: the project's embedded default data.

    python -m tools.make_synthetic --output data/synthetic
    python -m tools.make_synthetic --output data/synthetic_small --num-ids 300 --images-per-id 40 --pairs 1200

The output directory holds what insightface-style training expects:

- ``train.rec`` / ``train.idx``: record 0 is a header (label ``[N+1, N+1+C]``), records 1..N the
  JPEG images (label = class id, BGR 112x112 as insightface stores them), then one identity
  record per class with label ``[start, end)``;
- ``property``: ``num_classes,112,112``;
- ``lfw.bin``, ``cfp_fp.bin``, ``agedb_30.bin``, ``calfw.bin``, ``cplfw.bin``: pickles of (list of
  JPEG bytes, list of bool), two consecutive images per pair, written as Python 2 wrote the public
  files, from identities that never appear in ``train.rec``. Pairs come in 10 folds, each with its
  positive pairs first then its negative pairs, like LFW's ``pairs.txt``;
- ``manifest.json`` (parameters, seed, counts, the identity split), ``README.md`` and
  ``preview.jpg`` (the first images of the first identities).

Every image is a pure function of (seed, stream, identity or pair, index), so the same seed
gives byte-identical files whatever ``--workers`` is.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import time
from dataclasses import asdict, dataclass
from functools import lru_cache
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
from tqdm import tqdm

from tools import synthetic_faces as sf
from tools.make_bin import write_bin
from utils.cli import run_cli
from utils.fileio import atomic_path, atomic_write_bytes, refuse_overwrite
from utils.recordio import IRHeader, MXIndexedRecordIO, pack

logger = logging.getLogger("make_synthetic")

FOLDS = 10  # LFW's protocol: 10 contiguous folds, positives first within each


@dataclass(frozen=True)
class BinSpec:
    """How one verification set is made: nuisance per image of a pair, age gap, negatives."""

    profiles: tuple[str, str]
    age_gap: tuple[float, float] | None = None  # years between the two images of every pair
    hard_negatives: bool = False  # negatives of look-alike identities (as CALFW / CPLFW)
    stream: int = 0  # fixed per bin so that choosing --targets changes no other file


# Each set stresses what its real counterpart stresses.
BIN_SPECS: dict[str, BinSpec] = {
    "lfw": BinSpec(("lfw", "lfw"), stream=0),
    "cfp_fp": BinSpec(("cfp_fp/frontal", "cfp_fp/profile"), stream=1),  # frontal vs profile
    "agedb_30": BinSpec(("agedb_30", "agedb_30"), age_gap=(20.0, 40.0), stream=2),
    "calfw": BinSpec(("calfw", "calfw"), age_gap=(5.0, 30.0), hard_negatives=True, stream=3),
    "cplfw": BinSpec(("cplfw", "cplfw"), hard_negatives=True, stream=4),
}
TARGETS = ("train",) + tuple(BIN_SPECS)


# --------------------------------------------------------------------------------------------
# plans: what to render, decided up front in the main process
def parse_range(text: str) -> tuple[int, int]:
    """'50' -> (50, 50); '40-60' -> (40, 60)."""
    try:
        lo, _, hi = text.partition("-")
        lo_i, hi_i = int(lo), int(hi or lo)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected N or LO-HI, got {text!r}") from None
    if lo_i < 1 or hi_i < lo_i:
        raise argparse.ArgumentTypeError(f"expected 1 <= LO <= HI, got {text!r}")
    return lo_i, hi_i


def images_per_identity(seed: int, num_ids: int, per_id: tuple[int, int]) -> np.ndarray:
    """The number of training images of every identity (uniform in the range, per identity)."""
    lo, hi = per_id
    return np.array([np.random.default_rng([seed, sf.STREAM_COUNT, i, 0]).integers(lo, hi + 1)
                     for i in range(num_ids)], np.int64)


def pair_layout(n_pairs: int, folds: int = FOLDS) -> list[bool]:
    """issame of every pair: contiguous folds (sized as KFold splits them), positives first."""
    if n_pairs < 2 * folds:
        raise ValueError(f"--pairs must be at least {2 * folds} (a positive and a negative pair in "
                         f"each of the {folds} folds), got {n_pairs}")
    issame: list[bool] = []
    for f in range(folds):
        size = n_pairs // folds + (1 if f < n_pairs % folds else 0)
        issame += [True] * ((size + 1) // 2) + [False] * (size // 2)
    return issame


@lru_cache(maxsize=8192)
def _identity(seed: int, identity: int) -> dict:
    return sf.sample_identity(sf.identity_rng(seed, identity))


def _look(ident: dict) -> np.ndarray:
    # coarse appearance for look-alike negatives: sex, skin tone, hair colour and style
    return np.concatenate([[ident["masc"] * 2.0, ident["skin_t"] * 4.0],
                           ident["hair"] / 64.0, [ident["style"] in (5, 6)]])


def plan_pairs(seed: int, name: str, eval_ids: Sequence[int], n_pairs: int) -> list[dict]:
    """The pairs of one verification set: identities and pair-level nuisance of both images."""
    spec = BIN_SPECS[name]
    rng = np.random.default_rng([seed, sf.STREAM_PAIRS, spec.stream, 0])
    pool = np.asarray(eval_ids)
    if len(pool) < 2:
        raise ValueError(f"{name}: need at least 2 held-out identities (--eval-ids), got {len(pool)}")
    plans = []
    for same in pair_layout(n_pairs):
        a = int(rng.choice(pool))
        if same:
            b = a
        elif spec.hard_negatives:
            cands = [int(c) for c in rng.choice(pool, size=min(8, len(pool)), replace=False) if c != a]
            look = _look(_identity(seed, a))
            b = min(cands, key=lambda c: float(np.sum((_look(_identity(seed, c)) - look) ** 2)))
        else:
            b = int(rng.choice(pool[pool != a]))
        overrides: list[dict[str, Any]] = [{}, {}]
        if spec.age_gap:  # every pair spans the gap, negatives too: the gap tells nothing
            gap = rng.uniform(*spec.age_gap)
            first = rng.random() < 0.5
            overrides[0]["age_delta"] = gap / 2 if first else -gap / 2
            overrides[1]["age_delta"] = -overrides[0]["age_delta"]
        plans.append({"ids": (a, b), "issame": same, "overrides": overrides})
    return plans


# --------------------------------------------------------------------------------------------
# rendering (in worker processes)
_WORKER: dict[str, Any] = {}


def _init_worker(seed: int, quality: int) -> None:
    cv2.setNumThreads(1)  # one process per core already
    _WORKER.update(seed=seed, quality=quality)


def _render_train(job: tuple[int, int, int]) -> list[bytes]:
    identity, k0, k1 = job
    seed, quality = _WORKER["seed"], _WORKER["quality"]
    ident = _identity(seed, identity)
    prof = sf.get_profile("train")
    out = []
    for k in range(k0, k1):
        rng = sf.image_rng(seed, sf.STREAM_TRAIN, identity, k)
        out.append(sf.encode_jpeg(sf.render(ident, sf.sample_nuisance(rng, prof), rng), quality))
    return out


def _render_pairs(job: tuple[str, int, list[dict]]) -> list[bytes]:
    name, p0, plans = job
    seed, quality = _WORKER["seed"], _WORKER["quality"]
    spec = BIN_SPECS[name]
    out = []
    for p, plan in enumerate(plans, p0):
        for slot in (0, 1):
            ident = _identity(seed, plan["ids"][slot])
            rng = sf.image_rng(seed, sf.STREAM_EVAL + spec.stream, p, slot)
            nz = sf.sample_nuisance(rng, sf.get_profile(spec.profiles[slot]), **plan["overrides"][slot])
            out.append(sf.encode_jpeg(sf.render(ident, nz, rng), quality))
    return out


class _Runner:
    """Ordered parallel map over jobs (in-process when workers == 1)."""

    def __init__(self, workers: int, seed: int, quality: int):
        self.workers = workers
        _init_worker(seed, quality)
        # spawn, not fork: forking a process that already runs threads (torch, a DataLoader,
        # tqdm's monitor) can deadlock the children
        self.pool = (mp.get_context("spawn").Pool(workers, _init_worker, (seed, quality))
                     if workers > 1 else None)

    def map(self, fn, jobs: Sequence) -> Iterator:
        if self.pool is None:
            return map(fn, jobs)
        return self.pool.imap(fn, jobs, chunksize=1)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool.join()


# --------------------------------------------------------------------------------------------
# writers
def write_train(out_dir: str, runner: _Runner, seed: int, num_ids: int, per_id: tuple[int, int],
                progress: bool = True) -> tuple[int, list[np.ndarray]]:
    """Write train.rec/.idx and property; return the image count and preview images."""
    counts = images_per_identity(seed, num_ids, per_id)
    n = int(counts.sum())
    jobs = [(i, k0, min(k0 + 16, int(c))) for i, c in enumerate(counts) for k0 in range(0, int(c), 16)]
    preview: list[np.ndarray] = []
    rec_path, idx_path = os.path.join(out_dir, "train.rec"), os.path.join(out_dir, "train.idx")
    with atomic_path(rec_path) as tmp_rec, atomic_path(idx_path) as tmp_idx:
        rec = MXIndexedRecordIO(tmp_idx, tmp_rec, "w")
        rec.write_idx(0, pack(IRHeader(0, [n + 1, n + 1 + num_ids], 0, 0), b""))
        key = 1
        bar = tqdm(total=n, desc="train.rec", unit="img", disable=not progress)
        for (identity, k0, _), images in zip(jobs, runner.map(_render_train, jobs)):
            for k, jpeg in enumerate(images, k0):
                rec.write_idx(key, pack(IRHeader(0, float(identity), key, 0), jpeg))
                if identity < 8 and k < 8:
                    preview.append(cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR))
                key += 1
            bar.update(len(images))
        bar.close()
        starts = np.concatenate([[1], 1 + np.cumsum(counts)])
        for c in range(num_ids):  # identity records: [start, end) of each class's image keys
            key = n + 1 + c
            rec.write_idx(key, pack(IRHeader(0, [int(starts[c]), int(starts[c + 1])], key, 0), b""))
        rec.close()
    atomic_write_bytes(os.path.join(out_dir, "property"), f"{num_ids},112,112".encode())
    return n, preview


def write_pairs(out_dir: str, name: str, runner: _Runner, seed: int, eval_ids: Sequence[int],
                n_pairs: int, progress: bool = True) -> dict:
    """Write one verification .bin; return its manifest entry."""
    plans = plan_pairs(seed, name, eval_ids, n_pairs)
    jobs = [(name, p0, plans[p0 : p0 + 25]) for p0 in range(0, len(plans), 25)]
    images: list[bytes] = []
    bar = tqdm(total=2 * n_pairs, desc=f"{name}.bin", unit="img", disable=not progress)
    for chunk in runner.map(_render_pairs, jobs):
        images += chunk
        bar.update(len(chunk))
    bar.close()
    issame = [p["issame"] for p in plans]
    with atomic_path(os.path.join(out_dir, f"{name}.bin")) as tmp:
        with open(tmp, "wb") as f:
            write_bin(f, images, issame)
    spec = BIN_SPECS[name]
    used = sorted({i for p in plans for i in p["ids"]})
    return {"pairs": n_pairs, "positive": int(sum(issame)), "negative": n_pairs - int(sum(issame)),
            "folds": FOLDS, "profiles": list(spec.profiles), "age_gap": spec.age_gap,
            "hard_negatives": spec.hard_negatives, "identities_used": len(used)}


def _preview_grid(images: list[np.ndarray], cols: int = 8) -> np.ndarray:
    rows = [np.concatenate(images[r : r + cols], 1) for r in range(0, len(images) - cols + 1, cols)]
    return np.concatenate(rows, 0)


def _readme(manifest: dict) -> str:
    lines = [
        "# Synthetic faces (ContraFace's embedded default data)",
        "",
        "Procedurally rendered faces (tools/synthetic_faces.py), written by `python -m "
        "tools.make_synthetic` in insightface's formats. Regenerate byte-identically with:",
        "",
        f"    {manifest['command']}",
        "",
        f"- train.rec/train.idx: {manifest.get('num_images', 0)} images of "
        f"{manifest['num_classes']} identities (ids {manifest['train_identities'][0]}.."
        f"{manifest['train_identities'][1] - 1}).",
        f"- verification sets from held-out identities {manifest['eval_identities'][0]}.."
        f"{manifest['eval_identities'][1] - 1} (never in train.rec), 10 folds, positives first "
        "in each fold:",
    ]
    for name, b in manifest["bins"].items():
        lines.append(f"  - {name}.bin: {b['pairs']} pairs ({b['positive']} positive), "
                     f"nuisance {' / '.join(b['profiles'])}"
                     + (f", age gap {b['age_gap'][0]:g}-{b['age_gap'][1]:g} years" if b["age_gap"] else "")
                     + (", look-alike negatives" if b["hard_negatives"] else ""))
    lines += ["", "Generation parameters, profiles and counts: manifest.json.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------
# command line
def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    p = argparse.ArgumentParser(
        prog="python -m tools.make_synthetic",
        description="Render the learnable synthetic face dataset (train.rec + verification .bins).")
    p.add_argument("--output", required=True, help="output directory")
    p.add_argument("--num-ids", type=int, default=1000, help="training identities (default 1000)")
    p.add_argument("--images-per-id", type=parse_range, default=(40, 60), metavar="N|LO-HI",
                   help="training images per identity, fixed or drawn per identity (default 40-60)")
    p.add_argument("--eval-ids", type=int, default=1000,
                   help="held-out identities the verification pairs are drawn from (default 1000)")
    p.add_argument("--pairs", type=int, default=6000, help="pairs per verification set (default 6000)")
    p.add_argument("--targets", default=",".join(TARGETS),
                   help=f"comma-separated subset of {','.join(TARGETS)} (default: all)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95, as mxnet)")
    p.add_argument("--workers", type=int, default=os.cpu_count() or 1,
                   help="render processes (default: CPU count); does not change the output")
    p.add_argument("--force", action="store_true", help="overwrite existing files")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def _targets(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TARGETS]
    if unknown or not names:
        raise ValueError(f"--targets: unknown {', '.join(unknown) or '(empty)'}; known: {', '.join(TARGETS)}")
    return [t for t in TARGETS if t in names]


def _command(args: argparse.Namespace, targets: list[str]) -> str:
    lo, hi = args.images_per_id
    per_id = str(lo) if lo == hi else f"{lo}-{hi}"
    # the output directory is left out: the files do not depend on it
    return (f"python -m tools.make_synthetic --output DIR --num-ids {args.num_ids} "
            f"--images-per-id {per_id} --eval-ids {args.eval_ids} --pairs {args.pairs} "
            f"--seed {args.seed} --quality {args.quality} --targets {','.join(targets)}")


def main(argv: Sequence[str] | None = None) -> dict:
    """Generate the dataset; returns the manifest."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    targets = _targets(args.targets)
    for flag, value, low in (("--num-ids", args.num_ids, 1), ("--eval-ids", args.eval_ids, 2),
                             ("--workers", args.workers, 1), ("--seed", args.seed, 0)):
        if value < low:
            raise ValueError(f"{flag} must be >= {low}, got {value}")
    if not 1 <= args.quality <= 100:
        raise ValueError(f"--quality must be in 1..100, got {args.quality}")
    bins = [t for t in targets if t != "train"]
    if bins:
        pair_layout(args.pairs)  # fail on a bad --pairs before anything is written
    out = args.output
    files = (["train.rec", "train.idx", "property"] if "train" in targets else [])
    files += [f"{b}.bin" for b in bins] + ["manifest.json", "README.md", "preview.jpg"]
    refuse_overwrite([os.path.join(out, f) for f in files], args.force)
    os.makedirs(out, exist_ok=True)

    train_ids = (0, args.num_ids)
    eval_ids = (args.num_ids, args.num_ids + args.eval_ids)  # disjoint from training by construction
    manifest: dict[str, Any] = {
        "format": "contraface-synthetic-v1",
        "command": _command(args, targets),
        "seed": args.seed,
        "image_size": [112, 112],
        "jpeg_quality": args.quality,
        "num_classes": args.num_ids,
        "images_per_id": list(args.images_per_id),
        "train_identities": list(train_ids),
        "eval_identities": list(eval_ids),
        "targets": targets,
        "bins": {},
        "profiles": {name: asdict(p) for name, p in sf.PROFILES.items()},
    }
    start = time.perf_counter()
    runner = _Runner(args.workers, args.seed, args.quality)
    preview: list[np.ndarray] = []
    try:
        if "train" in targets:
            n, preview = write_train(out, runner, args.seed, args.num_ids, args.images_per_id,
                                     not args.no_progress)
            manifest["num_images"] = n
        for name in bins:
            manifest["bins"][name] = write_pairs(out, name, runner, args.seed, range(*eval_ids),
                                                 args.pairs, not args.no_progress)
    finally:
        runner.close()
    if not preview:  # bins only: show the first held-out identities instead
        preview = [sf.render_identity_image(args.seed, i, k, "lfw") for i in range(eval_ids[0],
                   min(eval_ids[0] + 4, eval_ids[1])) for k in range(8)]
    ok, jpg = cv2.imencode(".jpg", _preview_grid(preview), [cv2.IMWRITE_JPEG_QUALITY, 90])
    atomic_write_bytes(os.path.join(out, "preview.jpg"), jpg.tobytes())
    atomic_write_bytes(os.path.join(out, "manifest.json"),
                       (json.dumps(manifest, indent=1, default=_json_default) + "\n").encode())
    atomic_write_bytes(os.path.join(out, "README.md"), _readme(manifest).encode())
    _make_readable([os.path.join(out, f) for f in files])
    seconds = time.perf_counter() - start
    n_img = manifest.get("num_images", 0) + 2 * args.pairs * len(bins)
    logger.info("wrote %s: %d images in %.1f s (%.0f images/s, %d workers)", out, n_img, seconds,
                n_img / max(seconds, 1e-9), runner.workers)
    return manifest


def _make_readable(paths: Sequence[str]) -> None:
    # atomic_path's temporary files are created 0600; datasets are shared, so use the umask
    umask = os.umask(0)
    os.umask(umask)
    for path in paths:
        if os.path.exists(path):
            os.chmod(path, 0o666 & ~umask)


def _json_default(o: Any) -> Any:
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, (tuple, np.ndarray)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


if __name__ == "__main__":
    run_cli(main)
