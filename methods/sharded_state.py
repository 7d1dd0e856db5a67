"""Checkpoints of Partial FC's sharded class centers: gather on rank 0, re-shard on load.

A training checkpoint of a Partial FC run keeps every rank's block of centers, and of the
optimizer state that has the centers' shape (SGD's momentum), with the classes it covers:

    checkpoint["partial_fc"] = {"head.head.kernel": {"num_classes": C,
        "class_ranges": [[0, 3], [3, 5]], "kernel": [shard0, shard1],
        "optimizer": {"momentum_buffer": [shard0, shard1]}}}

and leaves them out of ``checkpoint["head"]`` and ``checkpoint["optimizer"]``. Loading cuts this
rank's columns out of the stored blocks, so a run may resume on any number of processes.
Plain tensors, lists and dicts only: ``torch.load(weights_only=True)`` reads it.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from losses.partial_fc import PartialFC
from utils.errors import ConfigError


def partial_fc_modules(module: nn.Module) -> dict[str, PartialFC]:
    """Every PartialFC inside ``module``, by its qualified name."""
    return {name: child for name, child in module.named_modules() if isinstance(child, PartialFC)}


def sharded_parameter_names(module: nn.Module) -> list[str]:
    """Qualified names of the sharded class centers in ``module`` (for DDP to leave alone)."""
    return [_kernel_key(name) for name in partial_fc_modules(module)]


def _kernel_key(name: str) -> str:
    return f"{name}.head.kernel" if name else "head.kernel"


def _optimizer_index(optimizer: torch.optim.Optimizer, param: torch.Tensor) -> int:
    """The number ``optimizer.state_dict()`` gives ``param`` (its position over all groups)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for index, candidate in enumerate(params):
        if candidate is param:
            return index
    raise ValueError("the sharded class centers are not in the optimizer")


def _gather_columns(tensor: torch.Tensor, pfc: PartialFC) -> list[torch.Tensor] | None:
    """Every rank's ``tensor`` (D, num_local of that rank) on rank 0, on the CPU, in rank order."""
    if pfc.world_size == 1:
        return [tensor.detach().cpu().clone()]
    if pfc.rank != 0:
        dist.send(tensor.detach().contiguous(), dst=0)
        return None
    shards = [tensor.detach().cpu().clone()]
    for rank, (start, stop) in enumerate(pfc.class_ranges()[1:], start=1):
        # one block at a time through the device: rank 0 never holds all of them there
        buffer = tensor.new_empty((tensor.shape[0], stop - start))
        dist.recv(buffer, src=rank)
        shards.append(buffer.cpu())
    return shards


def gather_sharded_state(method: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any] | None:
    """Every rank's centers and their optimizer state, for the checkpoint (collective; rank 0 gets it)."""
    entries: dict[str, Any] = {}
    for name, pfc in partial_fc_modules(method).items():
        kernel = pfc.kernel
        state = optimizer.state.get(kernel, {})
        keys = sorted(k for k, v in state.items() if torch.is_tensor(v) and v.shape == kernel.shape)
        entry = {
            "num_classes": pfc.num_classes,
            "class_ranges": [list(r) for r in pfc.class_ranges()],
            "kernel": _gather_columns(kernel, pfc),
            "optimizer": {key: _gather_columns(state[key], pfc) for key in keys},
        }
        entries[_kernel_key(name)] = entry
    if not entries or dist.is_initialized() and dist.get_rank() != 0:
        return None
    return entries


def strip_local_shards(
    head_state: dict[str, Any], optimizer_state: dict[str, Any], method: nn.Module, optimizer: torch.optim.Optimizer
) -> None:
    """Drop rank 0's own block from the checkpoint's head and optimizer dicts (the entries hold all)."""
    for name, pfc in partial_fc_modules(method).items():
        head_state.pop(_kernel_key(name), None)
        index = _optimizer_index(optimizer, pfc.kernel)
        if index not in optimizer_state["state"]:
            continue
        # a new dict: optimizer.state_dict() shares the per-parameter dicts with the live optimizer
        kept = {
            k: v
            for k, v in optimizer_state["state"][index].items()
            if not (torch.is_tensor(v) and v.shape == pfc.kernel.shape)
        }
        if kept:
            optimizer_state["state"][index] = kept
        else:
            del optimizer_state["state"][index]


def select_columns(shards: list[torch.Tensor], ranges: list[list[int]], start: int, stop: int) -> torch.Tensor:
    """Columns [start, stop) of the blocks ``shards`` covering ``ranges`` ([first, end) each)."""
    pieces = [
        shard[:, max(first, start) - first : min(end, stop) - first]
        for shard, (first, end) in zip(shards, ranges)
        if first < stop and end > start
    ]
    return torch.cat(pieces, dim=1)


def load_sharded_state(
    checkpoint: dict[str, Any],
    state: dict[str, Any],
    optimizer_state: dict[str, Any],
    method: nn.Module,
    optimizer: torch.optim.Optimizer,
    path: str,
) -> None:
    """Put this rank's columns of the checkpoint's sharded entries into ``state`` / ``optimizer_state``."""
    entries = checkpoint.get("partial_fc") or {}
    modules = partial_fc_modules(method)
    if entries and not modules:
        raise ConfigError(f"{path} was written with partial_fc = True; resume it with --set partial_fc=True")
    for name, pfc in modules.items():
        key = _kernel_key(name)
        if key not in entries:
            raise ConfigError(
                f"{path} has no sharded class centers {key!r} (written with partial_fc = False?); resume it "
                "with --set partial_fc=False, or start from its weights with init_weights"
            )
        entry = entries[key]
        if entry["num_classes"] != pfc.num_classes:
            raise ConfigError(
                f"{path}: its class centers cover {entry['num_classes']} classes, but num_classes is "
                f"{pfc.num_classes} in the config"
            )
        start, stop = pfc.class_range
        state[key] = select_columns(entry["kernel"], entry["class_ranges"], start, stop)
        index = _optimizer_index(optimizer, pfc.kernel)
        for name_, shards in entry["optimizer"].items():
            optimizer_state["state"].setdefault(index, {})[name_] = select_columns(
                shards, entry["class_ranges"], start, stop
            )


def checkpoint_centers(
    obj: dict[str, Any], num_classes: int, start: int, stop: int
) -> tuple[torch.Tensor | None, str]:
    """(centers [start, stop) of a replicated or sharded training checkpoint, "") or (None, why not)."""
    kernel = (obj.get("head") or {}).get("head.kernel")
    if torch.is_tensor(kernel):
        if kernel.dim() != 2 or kernel.shape[1] != num_classes:
            return None, f"{tuple(kernel.shape)} does not fit {num_classes} classes"
        return kernel[:, start:stop], ""
    entry = (obj.get("partial_fc") or {}).get("head.head.kernel")
    if entry is None:
        return None, "the file has none"
    if entry["num_classes"] != num_classes:
        return None, f"the file's {entry['num_classes']} classes do not fit {num_classes}"
    return select_columns(entry["kernel"], entry["class_ranges"], start, stop), ""
