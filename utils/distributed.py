"""Process-group set-up for torchrun, ``python -m torch.distributed.launch`` and plain python."""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits: rank, local rank, world size and its device."""

    rank: int
    local_rank: int
    world_size: int
    device: torch.device

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_process_group(cls, device: torch.device | str = "cpu") -> "DistEnv":
        """This process's place in the initialised default process group (one process without one)."""
        if dist.is_available() and dist.is_initialized():
            rank, world = dist.get_rank(), dist.get_world_size()
        else:
            rank, world = 0, 1
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
        return cls(rank=rank, local_rank=local_rank, world_size=world, device=torch.device(device))


def init_distributed(local_rank: int | None = None) -> DistEnv:
    """Join the process group described by the launcher's environment (NCCL on GPU, gloo on CPU).

    ``torchrun`` sets RANK/WORLD_SIZE/LOCAL_RANK; the deprecated ``torch.distributed.launch``
    sets the same and also passes ``--local-rank``; a plain ``python train.py`` is rank 0 of 1.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if "LOCAL_RANK" in os.environ:
        local_rank = int(os.environ["LOCAL_RANK"])
    local_rank = int(local_rank or 0)
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        if rank == 0:
            warn_if_restarts_share_store(os.environ)
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
    return DistEnv(rank=rank, local_rank=local_rank, world_size=world_size, device=device)


SHARED_STORE_HINT = (
    "torchrun --max-restarts {restarts} shares one store between restart attempts, so a restarted "
    "group can read the dead group's addresses and fail or hang while connecting "
    "(pytorch/pytorch#135712); launch with TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 torchrun ..."
)


def warn_if_restarts_share_store(environ: Mapping[str, str]) -> None:
    """Warn where torchrun will restart workers that share its rendezvous store (restarts unreliable)."""
    restarts = int(environ.get("TORCHELASTIC_MAX_RESTARTS", "0"))
    if restarts > 0 and environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True":
        warnings.warn(SHARED_STORE_HINT.format(restarts=restarts), RuntimeWarning, stacklevel=2)


def barrier(env: DistEnv) -> None:
    """Wait for every rank (no-op for one process)."""
    if env.distributed:
        dist.barrier()


def all_gather_objects(env: DistEnv, obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order (``[obj]`` for one process)."""
    if not env.distributed:
        return [obj]
    gathered: list[Any] = [None] * env.world_size
    dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(env: DistEnv) -> None:
    """Leave the process group."""
    if env.distributed and dist.is_initialized():
        dist.destroy_process_group()
