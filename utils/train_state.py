"""Training checkpoints for exact resume: model, optimizer, scaler, step, RNG and per-rank state.

A checkpoint is one ``torch.save`` dict, written atomically by rank 0 (temp file + rename, so a
run killed while saving keeps its previous checkpoint) and loadable with
``torch.load(weights_only=True)``: tensors, numbers, strings, lists, dicts only.

    {"format": "contraface", "version": 1, "network": str, "network_kwargs": dict,
     "backbone": state_dict, "head": state_dict (the method without its backbone: class centers,
     ContraFace margin), "optimizer": ..., "scaler": ... | None, "step": int, "epoch": int,
     "world_size": int, "ranks": [per-rank RNG states and buffers], "callbacks": {...},
     "config": dict[, "partial_fc": every rank's class centers, see utils/sharded_state.py]}

Buffers (BatchNorm statistics, the ContraFace margin) are not synchronised between ranks during
training, as in the reference, so every rank's copy is kept in ``ranks``.
"""

from __future__ import annotations

import glob
import logging
import os
import random
import re
from typing import Any

import numpy as np
import torch
from torch import nn

from utils.fileio import atomic_path
from utils.sharded_state import load_sharded_state, strip_local_shards

log = logging.getLogger(__name__)

FORMAT, VERSION = "contraface", 1
_CHECKPOINT_RE = re.compile(r"checkpoint-(\d+)\.pt$")
_BACKBONE_RE = re.compile(r"backbone-(\d+)\.pth$")


def checkpoint_path(output_dir: str, step: int) -> str:
    """Where the checkpoint of ``step`` lives."""
    return os.path.join(output_dir, f"checkpoint-{step}.pt")


def _numbered(output_dir: str, pattern: str, regex: re.Pattern) -> list[tuple[int, str]]:
    found = []
    for path in glob.glob(os.path.join(output_dir, pattern)):
        match = regex.search(os.path.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return sorted(found)


def list_checkpoints(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the training checkpoints in ``output_dir``, oldest first."""
    return _numbered(output_dir, "checkpoint-*.pt", _CHECKPOINT_RE)


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
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    step: int,
    epoch: int,
    ranks: list[dict[str, Any]],
    network: str,
    network_kwargs: dict[str, Any],
    callbacks: dict[str, Any],
    config: dict[str, Any],
    sharded: dict[str, Any] | None = None,
) -> None:
    """Write a full training checkpoint atomically (call on rank 0).

    ``sharded``: Partial FC's centers of every rank (``sharded_state.gather_sharded_state``).
    """
    state = method.state_dict()
    checkpoint = {
        "format": FORMAT,
        "version": VERSION,
        "network": network,
        "network_kwargs": network_kwargs,
        "backbone": {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")},
        "head": {k: v for k, v in state.items() if not k.startswith("backbone.")},
        "optimizer": optimizer.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None and scaler.is_enabled() else None,
        "step": step,
        "epoch": epoch,
        "world_size": len(ranks),
        "ranks": ranks,
        "callbacks": callbacks,
        "config": config,
    }
    if sharded:
        strip_local_shards(checkpoint["head"], checkpoint["optimizer"], method, optimizer)
        checkpoint["partial_fc"] = sharded
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
        raise ValueError(f"{path}: not a readable training checkpoint ({exc})") from exc
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != FORMAT or "optimizer" not in checkpoint:
        raise ValueError(
            f"{path}: not a training checkpoint of this project (use utils.checkpoint.load_weights "
            "to start from someone else's weights)"
        )
    return checkpoint


def load_checkpoint(
    checkpoint: dict[str, Any],
    *,
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None,
    rank: int,
    device: torch.device,
    path: str = "the checkpoint",
) -> None:
    """Restore model, optimizer, scaler and this rank's buffers and RNG from ``checkpoint``.

    Partial FC's centers and their momentum are cut to this rank's classes (any world size).
    """
    state = {f"backbone.{k}": v for k, v in checkpoint["backbone"].items()}
    state.update(checkpoint["head"])
    load_sharded_state(checkpoint, state, checkpoint["optimizer"], method, optimizer, path)
    method.load_state_dict(state)
    optimizer.load_state_dict(checkpoint["optimizer"])
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
        except (ValueError, OSError) as exc:
            log.warning(f"skipping {path}: {exc}")
    return None


def _prune(found: list[tuple[int, str]], keep: int) -> None:
    if keep > 0:
        for _, path in found[:-keep]:
            os.remove(path)


def prune_checkpoints(output_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest training checkpoints (0: keep all)."""
    _prune(list_checkpoints(output_dir), keep)


def backbone_path(output_dir: str, step: int) -> str:
    """Where the backbone snapshot of evaluation step ``step`` lives."""
    return os.path.join(output_dir, f"backbone-{step}.pth")


def list_backbones(output_dir: str) -> list[tuple[int, str]]:
    """(step, path) of the ``backbone-<step>.pth`` snapshots in ``output_dir``, oldest first."""
    return _numbered(output_dir, "backbone-*.pth", _BACKBONE_RE)


def prune_backbones(output_dir: str, keep: int) -> None:
    """Delete all but the ``keep`` newest backbone snapshots (0: keep all)."""
    _prune(list_backbones(output_dir), keep)


def save_backbone(path: str, backbone: nn.Module) -> None:
    """The backbone as a plain insightface-style state dict (what every evaluator loads), atomically."""
    with atomic_path(path) as tmp:
        torch.save(backbone.state_dict(), tmp)
