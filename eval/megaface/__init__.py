"""MegaFace challenge 1 evaluation (FaceScrub probes, MegaFace distractors), without mxnet.

* eval.megaface.lists         the devkit's template lists (facescrub / megaface JSON lists)
* eval.megaface.features      the devkit's binary feature format, feature trees, extraction
* eval.megaface.noises        insightface's noise removal (remove_noises.py's rule); also a CLI
* eval.megaface.protocol      devkit-free identification (CMC, rank-1) and verification (TAR@FAR)
* eval.megaface.devkit        runs the official devkit's run_experiment.py when you have it
* eval.megaface.megaface_eval the CLI: python -m eval.megaface.megaface_eval --help

Importing this package reads no files and starts no device.
"""

from .features import (
    encode_bin,
    extract_features,
    feature_path,
    load_features,
    read_bin,
    read_matrix,
    write_bin,
)
from .lists import MegaFaceError, ProbeList, read_distractor_list, read_probe_list
from .protocol import evaluate, evaluate_from_scores

__all__ = [
    "MegaFaceError",
    "ProbeList",
    "encode_bin",
    "evaluate",
    "evaluate_from_scores",
    "extract_features",
    "feature_path",
    "load_features",
    "read_bin",
    "read_distractor_list",
    "read_matrix",
    "read_probe_list",
    "write_bin",
]
