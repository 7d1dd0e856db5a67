"""The names of the files in a training run's folder, and of other projects' per-step weight files.

One run folder (``cfg.output``) holds::

    config.json              the resolved config (written once, at the start)
    training.log             rank 0's log
    tensorboard/             the scalars
    checkpoint-<step>.pt     training checkpoints for exact resume (the newest ``keep_checkpoints``)
    backbone-<step>.pth      the backbone of every evaluation step (the newest ``keep_backbones``)
    backbone.pth             the newest backbone (insightface's plain state dict)

The trainer writes them (``training/``); the evaluators' run-folder mode reads them (``eval/``).
"""

from __future__ import annotations

import os
import re

__all__ = [
    "BACKBONE",
    "CONFIG",
    "LOG",
    "TENSORBOARD",
    "backbone_path",
    "checkpoint_path",
    "is_step_weights",
    "list_backbones",
    "list_checkpoints",
    "list_step_weights",
    "require_step_weights",
    "step_from_filename",
]

CONFIG = "config.json"
LOG = "training.log"
TENSORBOARD = "tensorboard"
BACKBONE = "backbone.pth"
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)\.pt$")
_STEP_BACKBONE = re.compile(r"^backbone-(\d+)\.pth$")
# Per-step weight files, most preferred first when several share a step: the small backbone
# snapshots before the training checkpoints (same backbone, 3-4x the bytes).
_STEP_FILES = (
    _STEP_BACKBONE,  # this project, one per evaluation step
    re.compile(r"^(\d+)model\.pth$"),  # the original ContraFace
    re.compile(r"^(\d+)backbone\.pth$"),  # ElasticFace
    _CHECKPOINT,  # this project's training checkpoints
)
_STEP_IN_NAME = re.compile(r"(?:^|[-_])(\d+)(?=model\.pth$|backbone\.pth$|\.pt$|\.pth$)")


def checkpoint_path(output_dir: str, step: int) -> str:
    """Where the training checkpoint of ``step`` lives."""
    return os.path.join(output_dir, f"checkpoint-{step}.pt")


def backbone_path(output_dir: str, step: int) -> str:
    """Where the backbone snapshot of evaluation step ``step`` lives."""
    return os.path.join(output_dir, f"backbone-{step}.pth")


def _numbered(output_dir: str, pattern: re.Pattern) -> list[tuple[int, str]]:
    if not os.path.isdir(output_dir):
        return []
    found = []
    for name in os.listdir(output_dir):
        match = pattern.match(name)
        if match:
            found.append((int(match.group(1)), os.path.join(output_dir, name)))
    return sorted(found)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the training checkpoints in ``output_dir``, oldest first."""
    return _numbered(output_dir, _CHECKPOINT)


def list_backbones(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the ``backbone-<step>.pth`` snapshots in ``output_dir``, oldest first."""
    return _numbered(output_dir, _STEP_BACKBONE)


def step_from_filename(path: str | os.PathLike) -> int | None:
    """The training step in a checkpoint's name (``12000model.pth``, ``checkpoint-12000.pt``)."""
    match = _STEP_IN_NAME.search(os.path.basename(os.fspath(path)))
    return int(match.group(1)) if match else None


def _step_file(name: str) -> tuple[int, int] | None:
    """(step, preference rank) when ``name`` is a per-step weight file name, else None."""
    for rank, pattern in enumerate(_STEP_FILES):
        match = pattern.match(name)
        if match:
            return int(match.group(1)), rank
    return None


def is_step_weights(name: str) -> bool:
    """Whether a file name is one :func:`list_step_weights` recognises."""
    return _step_file(os.path.basename(name)) is not None


def list_step_weights(folder: str | os.PathLike) -> list[tuple[int, str]]:
    """(step, path) of a run folder's per-step weight files, one per step, in step order.

    Recognised names: ``backbone-<step>.pth``, ``<step>model.pth``, ``<step>backbone.pth`` and
    ``checkpoint-<step>.pt``; where a step has several, the first of these is taken.
    """
    folder = os.fspath(folder)
    best: dict[int, tuple[int, str]] = {}
    for name in os.listdir(folder):
        found = _step_file(name)
        if found and os.path.isfile(os.path.join(folder, name)):
            step, rank = found
            if step not in best or rank < best[step][0]:
                best[step] = (rank, os.path.join(folder, name))
    return [(step, best[step][1]) for step in sorted(best)]


def require_step_weights(folder: str | os.PathLike, flag: str = "--weights") -> list[tuple[int, str]]:
    """:func:`list_step_weights`, or FileNotFoundError naming ``flag`` and the folder when it has none."""
    steps = list_step_weights(folder)
    if not steps:
        raise FileNotFoundError(
            f"{flag} {os.fspath(folder)}: no per-step weight files (backbone-<step>.pth, "
            f"<step>model.pth, checkpoint-<step>.pt) in the folder")
    return steps
