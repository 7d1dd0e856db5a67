"""MegaFace / FaceScrub noise removal, with the rule of insightface's ``remove_noises.py``.

insightface publishes two lists of mislabelled images: ``facescrub_noises.txt`` (FaceScrub probe
file names, e.g. ``Aaron_Eckhart_136.png``) and ``megaface_noises.txt`` (distractor paths
``375/37531198@N00/4174611825_0.jpg``, optionally as ``index<TAB>path``); lines starting with ``#``
are comments. ``remove_noises.py`` rewrites every feature with the following rule, reproduced here:

1. Every feature of dimension D gets one extra dimension (``feature_ext = 1``), so all cleaned
   features have D + 1 values.
2. Clean FaceScrub images and clean distractors: the extra value is 0; the D values are unchanged.
3. A noisy MegaFace distractor keeps its D values and gets 100.0 as the extra value. Probes have 0
   there, so the distractor lies >= 100 away from every probe: with a distance-based score (the
   rule relies on the devkit's being one; eval.megaface.protocol scores by squared Euclidean
   distance for this reason) it can never outrank a true match.
4. A noisy FaceScrub image is replaced by ``f / ||f||`` with ``f = c + g``: ``c`` is the *sum* of
   the (D + 1)-dim clean features of the same identity (remove_noises.py groups by the folder
   ``<identity>/`` of the path; we group by the probe list's ``id``, one name per folder) and
   ``g`` is uniform noise in [-0.001, 0.001) on the D values (0 on the extra one). The identity
   must have at least one clean image.

The original draws ``g`` with NumPy's unseeded global generator; we use
``np.random.default_rng(seed)`` (one draw of D values per noisy image, in list order), so results
are reproducible and differ from any single run of the original only by this +-0.001 jitter.
"""

from __future__ import annotations

import argparse
import logging
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from utils.cli import run_cli
from utils.fileio import refuse_overwrite

from .features import load_features, write_features
from .lists import PROBE_LIST_NAME, MegaFaceError, read_distractor_list, read_probe_list

logger = logging.getLogger(__name__)

FEATURE_EXT = 1  # remove_noises.py's feature_ext: extra dimensions appended to every feature
MEGAFACE_NOISE_FILL = 100.0  # the extra value of a noisy distractor
FACESCRUB_JITTER = 0.001  # half-width of the uniform noise added to a noisy probe's centre


def _noise_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise MegaFaceError(f"{path}: noise list not found") from None
    return [ln.strip() for ln in lines if ln.strip() and not ln.startswith("#")]


def read_facescrub_noises(path: str) -> set[str]:
    """File names of noisy FaceScrub images (``facescrub_noises.txt``)."""
    return set(_noise_lines(path))


def read_megaface_noises(path: str) -> set[str]:
    """Relative paths ``a/b/c.jpg`` of noisy distractors (``idx<TAB>path`` lines are read too)."""
    out = set()
    for line in _noise_lines(path):
        fields = line.split("\t")
        out.add(fields[1] if len(fields) > 1 else line)
    return out


def facescrub_noise_key(rel_path: str) -> str:
    """The key remove_noises.py looks up in facescrub_noises.txt: the image's file name."""
    return rel_path.replace("\\", "/").split("/")[-1]


def megaface_noise_key(rel_path: str) -> str:
    """The key remove_noises.py looks up in megaface_noises.txt: the last three path components."""
    return "/".join(rel_path.replace("\\", "/").split("/")[-3:])


@dataclass
class NoiseStats:
    """How many probe and distractor features the rule replaced."""

    facescrub_noisy: int
    megaface_noisy: int


def remove_noises(
    probe_features: np.ndarray,
    probe_ids: Sequence[str],
    probe_paths: Sequence[str],
    distractor_features: np.ndarray,
    distractor_paths: Sequence[str],
    facescrub_noises: set[str],
    megaface_noises: set[str],
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, NoiseStats]:
    """remove_noises.py's rule (module docstring): (D+1)-dim probe, distractor features; stats."""
    probe_features = np.asarray(probe_features, dtype=np.float32)
    distractor_features = np.asarray(distractor_features, dtype=np.float32)
    dim = probe_features.shape[1]
    if distractor_features.shape[1] != dim:
        raise MegaFaceError(
            f"probe features have dimension {dim} but distractor features "
            f"{distractor_features.shape[1]}"
        )
    probes = np.zeros((len(probe_features), dim + FEATURE_EXT), dtype=np.float32)
    probes[:, :dim] = probe_features
    distractors = np.zeros((len(distractor_features), dim + FEATURE_EXT), dtype=np.float32)
    distractors[:, :dim] = distractor_features

    mf_noisy = np.array([megaface_noise_key(p) in megaface_noises for p in distractor_paths], bool)
    distractors[mf_noisy, dim:] = MEGAFACE_NOISE_FILL

    fs_noisy = [facescrub_noise_key(p) in facescrub_noises for p in probe_paths]
    centres: dict[str, np.ndarray] = {}
    for feat, ident, noisy in zip(probes, probe_ids, fs_noisy):
        if not noisy:
            # float32 running sum in list order, as the reference accumulates it
            centres.setdefault(ident, np.zeros(dim + FEATURE_EXT, dtype=np.float32))
            centres[ident] += feat
    rng = np.random.default_rng(seed)
    for i, (ident, noisy) in enumerate(zip(probe_ids, fs_noisy)):
        if not noisy:
            continue
        if ident not in centres:
            raise MegaFaceError(
                f"identity {ident!r}: every probe image is listed as noise ({probe_paths[i]} ...); "
                "remove_noises.py needs at least one clean image to build the replacement"
            )
        g = np.zeros(dim + FEATURE_EXT, dtype=np.float32)
        g[:dim] = rng.uniform(-FACESCRUB_JITTER, FACESCRUB_JITTER, dim)
        f = centres[ident] + g
        probes[i] = f / np.linalg.norm(f)
    stats = NoiseStats(facescrub_noisy=int(sum(fs_noisy)), megaface_noisy=int(mf_noisy.sum()))
    logger.info("noise removal: %d FaceScrub and %d MegaFace features replaced",
                stats.facescrub_noisy, stats.megaface_noisy)
    return probes, distractors, stats


def remove_noises_tree(
    feature_dir_in: str,
    feature_dir_out: str,
    algo: str,
    probe_paths: Sequence[str],
    probe_ids: Sequence[str],
    distractor_paths: Sequence[str],
    facescrub_noises: set[str],
    megaface_noises: set[str],
    seed: int = 0,
) -> NoiseStats:
    """remove_noises.py on feature trees: ``<in>/{facescrub,megaface}/...`` -> ``<out>/...``."""
    if os.path.abspath(feature_dir_in) == os.path.abspath(feature_dir_out):
        raise MegaFaceError(f"{feature_dir_out}: the output tree must differ from the input tree")
    probes = load_features(
        os.path.join(feature_dir_in, "facescrub"), probe_paths, algo, desc="read facescrub")
    distractors = load_features(
        os.path.join(feature_dir_in, "megaface"), distractor_paths, algo, desc="read megaface"
    )
    probes, distractors, stats = remove_noises(
        probes, probe_ids, probe_paths, distractors, distractor_paths,
        facescrub_noises, megaface_noises, seed,
    )
    write_features(os.path.join(feature_dir_out, "facescrub"), probe_paths, probes, algo)
    write_features(os.path.join(feature_dir_out, "megaface"), distractor_paths, distractors, algo)
    return stats


def build_parser() -> argparse.ArgumentParser:
    """CLI of remove_noises.py, reading the devkit's JSON lists."""
    p = argparse.ArgumentParser(
        prog="python -m eval.megaface.noises",
        description="Rewrite a MegaFace feature tree with insightface's noise-removal rule.",
    )
    p.add_argument("--feature-dir-input", required=True,
                   help="tree with facescrub/ and megaface/ features")
    p.add_argument("--feature-dir-out", required=True, help="where the cleaned tree is written")
    p.add_argument("--algo", required=True, help="feature file suffix: <image>_<algo>.bin")
    p.add_argument("--templatelists", required=True, help="the devkit's templatelists folder")
    p.add_argument("--probe-list", help="default: <templatelists>/facescrub_features_list.json")
    p.add_argument("--sizes", type=int, nargs="+", default=[1000000],
                   help="distractor lists whose features are rewritten (default: 1000000)")
    p.add_argument("--distractor-set", type=int, default=1)
    p.add_argument("--facescrub-noises", required=True)
    p.add_argument("--megaface-noises", required=True)
    p.add_argument("--seed", type=int, default=0, help="seed of the +-0.001 jitter on noisy probes")
    p.add_argument("--force", action="store_true", help="overwrite an existing output tree")
    return p


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python -m eval.megaface.noises``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    refuse_overwrite([args.feature_dir_out], args.force)
    probe = read_probe_list(args.probe_list or os.path.join(args.templatelists, PROBE_LIST_NAME))
    distractors: list[str] = []
    seen: set[str] = set()
    for size in args.sizes:
        for p in read_distractor_list(args.templatelists, size, args.distractor_set):
            if p not in seen:
                seen.add(p)
                distractors.append(p)
    stats = remove_noises_tree(
        args.feature_dir_input, args.feature_dir_out, args.algo, probe.paths, probe.ids,
        distractors, read_facescrub_noises(args.facescrub_noises),
        read_megaface_noises(args.megaface_noises), args.seed,
    )
    print(f"replaced {stats.facescrub_noisy} FaceScrub, {stats.megaface_noisy} MegaFace features")
    return 0


if __name__ == "__main__":
    run_cli(main)
