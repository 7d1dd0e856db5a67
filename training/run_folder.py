"""The run folder (``cfg.output``): what to resume from, the config written at the start, pruning.

The file names themselves are ``utils/run_files.py``'s (the evaluators read them too).
"""

from __future__ import annotations

import os

from torch import nn

from training import checkpoints
from utils import run_files
from utils.distributed import DistEnv, broadcast_object
from utils.fileio import atomic_path

__all__ = ["prepare_output", "save_snapshot", "write_config"]


def prepare_output(output: str, resume: str | None, env: DistEnv) -> tuple[str | None, dict | None]:
    """Decide (on rank 0) which checkpoint to resume from; refuse to overwrite an existing run.

    Returns the checkpoint's path and, where choosing it already loaded it (rank 0 of
    ``--resume auto``), the checkpoint itself, so that it is not read twice.
    """
    decision: tuple[str | None, str | None] = (None, None)  # (checkpoint path, error)
    loaded = None
    if env.is_main:
        existing = run_files.list_checkpoints(output) or os.path.exists(os.path.join(output, run_files.CONFIG))
        if resume == "auto":
            found = checkpoints.find_resume_checkpoint(output)
            if found:
                decision, loaded = (found[0], None), found[1]
        elif resume:
            decision = (resume, None if os.path.isfile(resume) else f"--resume {resume}: file not found")
        elif existing:
            decision = (
                None,
                f"{output} already holds a training run; continue it with --resume auto, "
                "or choose another folder with --set output=...",
            )
    path, error = broadcast_object(env, decision)
    if error:
        raise FileExistsError(error) if "already holds" in error else FileNotFoundError(error)
    return path, loaded


def write_config(output: str, text: str) -> None:
    """Write the resolved config (JSON text) as the run's ``config.json``, atomically."""
    with atomic_path(os.path.join(output, run_files.CONFIG)) as tmp, open(tmp, "w") as f:
        f.write(text)


def save_snapshot(output: str, backbone: nn.Module, step: int | None = None, keep: int = 0) -> str:
    """Save the backbone as ``backbone.pth`` (``step`` None) or ``backbone-<step>.pth`` (pruned to ``keep``)."""
    if step is None:
        path = os.path.join(output, run_files.BACKBONE)
        checkpoints.save_backbone(path, backbone)
    else:
        path = run_files.backbone_path(output, step)
        checkpoints.save_backbone(path, backbone)
        checkpoints.prune_backbones(output, keep)
    return path

