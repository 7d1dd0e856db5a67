"""Training checkpoints for exact resume: model, optimizer, scaler, step, RNG and per-rank state.

A checkpoint is one ``torch.save`` dict, written atomically by rank 0 (temp file + rename, so a
run killed while saving keeps its previous checkpoint) and loadable with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts only.

    {"format": "contraface", "version": 1, "network": str, "network_kwargs": dict,
     "backbone": state_dict, "head": state_dict (the method without its backbone: class centers,
     ContraFace margin), "optimizer": ..., "scaler": ... | None, "step": int, "epoch": int,
     "world_size": int, "ranks": [per-rank RNG states and buffers], "callbacks": {...},
     "config": dict[, "partial_fc": every rank's class centers, see methods/sharded_state.py]}

The method decides what it keeps (``TrainingMethod.checkpoint_state``: backbone, head,
optimizer, Partial FC's shards) and how it loads it back; this module adds the rest.

Buffers (BatchNorm statistics, the ContraFace margin) are not synchronised between ranks during
training, as in the reference, so every rank's copy is kept in ``ranks``.
"""

from __future__ import annotations

import logging
import os
import random
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.errors import CheckpointError
from utils.fileio import atomic_path
from utils.run_files import list_backbones, list_checkpoints

log = logging.getLogger(__name__)

FORMAT, VERSION = "contraface", 1


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every random generator the training touches, in a weights_only-loadable form."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
        "python": random.getstate(),
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Restore what :func:`rng_state` captured."""
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def rank_state(method: nn.Module, device: torch.device) -> dict[str, Any]:
    """This rank's RNG states and its unsynchronised buffers."""
    buffers = {name: buf.detach().cpu().clone() for name, buf in method.named_buffers()}
    return {"rng": rng_state(device), "buffers": buffers}


def restore_rank_state(state: dict[str, Any], method: nn.Module, device: torch.device) -> None:
    """Put this rank's buffers and RNG states back."""
    own = dict(method.named_buffers())
    for name, value in state["buffers"].items():
        own[name].copy_(value)
    set_rng_state(state["rng"], device)


def save_checkpoint(
    path: str,
    *,
    method_state: dict[str, Any],
    scaler: torch.amp.GradScaler | None,
    step: int,
    epoch: int,
    ranks: list[dict[str, Any]],
    network: str,
    network_kwargs: dict[str, Any],
    callbacks: dict[str, Any],
    config: dict[str, Any],
) -> None:
    """Write a full training checkpoint atomically (call on rank 0).

    ``method_state``: the method's ``checkpoint_state(optimizer)`` (backbone, head, optimizer and,
    under Partial FC, every rank's class centers).
    """
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "network": network,
        "network_kwargs": network_kwargs,
        **method_state,
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": step,
        "epoch": epoch,
        "world_size": len(ranks),
        "ranks": ranks,
        "callbacks": callbacks,
        "config": config,
    }
    with atomic_path(path) as tmp:
        torch.save(checkpoint, tmp)


def read_checkpoint(path: str) -> dict[str, Any]:
    """Load a training checkpoint (tensors on CPU) and check it is one of ours."""
    try:
        # memory-mapped: a rank reads the pages it uses, not the whole file (WebFace42M: GBs of centers)
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {path} not found") from None
    except Exception as exc:  # UnpicklingError, RuntimeError on a truncated zip, ...
        raise CheckpointError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or "optimizer" not in checkpoint:
        raise CheckpointError(
            f"{path}: not a training checkpoint of this project (use utils.checkpoint.load_weights "
            "to start from someone else's weights)"
        )
    return checkpoint


def load_checkpoint(
    checkpoint: dict[str, Any],
    *,
    method: Any,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rank: int,
    device: torch.device,
    path: str = "the checkpoint",
) -> None:
    """Restore model, optimizer, scaler and this rank's buffers and RNG from ``checkpoint``.

    ``method`` is a ``TrainingMethod``: it restores itself and its optimizer
    (``load_checkpoint_state``; Partial FC's centers are cut to this rank's classes).
    """
    method.load_checkpoint_state(checkpoint, optimizer, path)
    if scaler is not None and checkpoint.get("scaler") is not None:
        scaler.load_state_dict(checkpoint["scaler"])
    ranks = checkpoint["ranks"]
    if len(ranks) != checkpoint["world_size"] or rank >= len(ranks):
        log.warning(
            f"checkpoint was written by {checkpoint['world_size']} processes; this rank ({rank}) "
            "starts from rank 0's buffers with fresh random streams, so the resume is not exact"
        )
        restore_rank_state(ranks[0], method, device)
        return
    restore_rank_state(ranks[rank], method, device)


def find_resume_checkpoint(output_dir: str) -> tuple[str, dict[str, Any]] | None:
    """(path, checkpoint) of the newest checkpoint in ``output_dir`` that loads, or None.

    Unreadable ones (say, a disk that filled up) are reported and skipped, never deleted.
    """
    for _, path in reversed(list_checkpoints(output_dir)):
        try:
            return path, read_checkpoint(path)
        except (CheckpointError, OSError) as exc:
            log.warning(f"skipping {path}: {exc}")
    return None


def _prune(found: list[tuple[int, str]], keep: int) -> None:
    if keep > 0:
        for _, path in found[:-keep]:
            os.remove(path)


def prune_checkpoints(output_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest training checkpoints (0: keep all)."""
    _prune(list_checkpoints(output_dir), keep)


def prune_backbones(output_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest backbone snapshots (0: keep all)."""
    _prune(list_backbones(output_dir), keep)


def save_backbone(path: str, backbone: nn.Module) -> None:
    """The backbone as a plain insightface-style state dict (what every evaluator loads), atomically."""
    with atomic_path(path) as tmp:
        torch.save(backbone.state_dict(), tmp)
