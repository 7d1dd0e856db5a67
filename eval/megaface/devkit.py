"""Run the official MegaFace devkit (``devkit/experiments/run_experiment.py``) on our feature trees.

The devkit is closed Linux binaries (``bin/Identification``, ``bin/FuseResults``, built against
OpenCV 2.4) plus a Python driver. The driver resolves ``../bin``, ``../models`` and
``../templatelists`` relative to the working directory, so it must run from ``experiments/``:

    cd <devkit>/experiments
    python run_experiment.py <megaface features> <facescrub features> _<algo>.bin <out> \\
        -s <sizes...> -p <facescrub_features_list.json> -dlp <templatelists> [-d]

It writes ``<out>/cmc_facescrub_megaface_<algo>_<size>_1.json`` (``{"cmc": [0-based ranks, rates],
"roc": [fars, tars]}``) and ``matches_*.json``; parse_results reads the former.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import shutil
import subprocess
import sys
from typing import Sequence

from utils.errors import UserError

logger = logging.getLogger(__name__)

REQUIRED = (
    "experiments/run_experiment.py",
    "bin/Identification",
    "bin/FuseResults",
    "models/jb_identity.bin",
)


class DevkitError(UserError, RuntimeError):
    """The devkit is missing, incomplete, or its run failed."""


def check_devkit(devkit_dir: str) -> None:
    """Raise DevkitError naming every missing or non-executable part of the devkit."""
    if not os.path.isdir(devkit_dir):
        raise DevkitError(
            f"{devkit_dir}: MegaFace devkit folder not found (it ships in insightface's MegaFace "
            "test suite as devkit/ with experiments/, bin/, models/ and templatelists/)"
        )
    missing = [r for r in REQUIRED if not os.path.isfile(os.path.join(devkit_dir, r))]
    if missing:
        raise DevkitError(
            f"{devkit_dir}: incomplete MegaFace devkit, missing {', '.join(missing)}"
        )
    not_exec = [
        r for r in ("bin/Identification", "bin/FuseResults")
        if not os.access(os.path.join(devkit_dir, r), os.X_OK)
    ]
    if not_exec:
        raise DevkitError(
            f"{devkit_dir}: {', '.join(not_exec)} not executable; run: chmod +x "
            + " ".join(os.path.join(devkit_dir, r) for r in not_exec)
        )


def default_python() -> str:
    """Interpreter for run_experiment.py: python2 where installed (the devkit's), else this one."""
    return shutil.which("python2") or sys.executable


def build_command(
    devkit_dir: str,
    megaface_features: str,
    facescrub_features: str,
    algo: str,
    out_dir: str,
    sizes: Sequence[int],
    probe_list: str,
    templatelists: str,
    python: str | None = None,
    delete_matrices: bool = False,
) -> list[str]:
    """The devkit's command line (run it with cwd = <devkit>/experiments, see run_devkit)."""
    cmd = [
        python or default_python(),
        "-u",
        os.path.join(os.path.abspath(devkit_dir), "experiments", "run_experiment.py"),
        os.path.abspath(megaface_features),
        os.path.abspath(facescrub_features),
        f"_{algo}.bin",
        os.path.abspath(out_dir),
        "-s", *[str(s) for s in sizes],
        "-p", os.path.abspath(probe_list),
        "-dlp", os.path.abspath(templatelists),
    ]
    if delete_matrices:
        cmd.append("-d")
    return cmd


def run_devkit(
    devkit_dir: str,
    megaface_features: str,
    facescrub_features: str,
    algo: str,
    out_dir: str,
    sizes: Sequence[int],
    probe_list: str,
    templatelists: str,
    python: str | None = None,
    delete_matrices: bool = False,
    ld_library_path: str | None = None,
) -> dict:
    """Run run_experiment.py; returns parse_results(). ``ld_library_path``: the OpenCV 2.4 libs."""
    check_devkit(devkit_dir)
    cmd = build_command(devkit_dir, megaface_features, facescrub_features, algo, out_dir, sizes,
                        probe_list, templatelists, python, delete_matrices)
    env = dict(os.environ)
    if ld_library_path:
        paths = (ld_library_path, env.get("LD_LIBRARY_PATH"))
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in paths if p)
    os.makedirs(out_dir, exist_ok=True)
    logger.info("running the MegaFace devkit: %s", " ".join(cmd))
    try:
        proc = subprocess.run(cmd, cwd=os.path.join(devkit_dir, "experiments"), env=env)
    except FileNotFoundError:
        raise DevkitError(f"cannot run {cmd[0]!r} (interpreter for run_experiment.py)") from None
    if proc.returncode != 0:
        raise DevkitError(
            f"run_experiment.py exited with status {proc.returncode}: {' '.join(cmd)}")
    results = parse_results(out_dir, algo)
    if not results:
        raise DevkitError(
            f"{out_dir}: the devkit finished but wrote no cmc_*_{algo}_*.json (a binary failed: "
            "check its output above; the binaries need OpenCV 2.4, see --devkit-ld-library-path)"
        )
    return results


def parse_results(out_dir: str, algo: str) -> dict:
    """{size: {"set", "rank1", "cmc", "roc", "file"}} from the devkit's cmc_*.json files."""
    pattern = re.compile(r"cmc_.+_" + re.escape(algo) + r"_(\d+)_(\d+)\.json$")
    out = {}
    for path in sorted(glob.glob(os.path.join(out_dir, f"cmc_*_{glob.escape(algo)}_*.json"))):
        m = pattern.search(os.path.basename(path))
        if not m:
            continue
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        cmc = data.get("cmc")
        # cmc = [0-based ranks, identification rates (fractions)]; its first point is rank 1
        rank1 = float(cmc[1][0]) if cmc and len(cmc) > 1 and cmc[1] else None
        out[m.group(1)] = {"set": int(m.group(2)), "rank1": rank1, "cmc": cmc,
                           "roc": data.get("roc"), "file": path}
    return out
