"""The interface between the trainer and a training method.

A method is an ``nn.Module`` that owns the backbone and everything else a step trains (heads,
projections, queues), so one DistributedDataParallel wrapper covers all of it and the trainer
never names a head. ``train.py`` calls, in this order::

    Method.check_config(cfg)                          # its own keys, before anything is built
    dataset, batches = Method.train_data(cfg, env)    # what a step sees
    method = Method.from_config(cfg, backbone, env)   # with its loss modules, for this process group
    method.load_init_weights(path)                    # cfg.init_weights (not when resuming)
    method.ddp_ignored_parameters()                   # rank-local parameters DDP must not average
    method.param_groups()                             # the optimizer's parameter groups
    method.set_epoch(epoch)                           # stage switches
    out = method(images, labels)                      # {"loss": tensor, "logs": {name: detached tensor}}
    method.extra_state()                              # {name: device scalar} worth logging
    method.checkpoint_state(optimizer)                # collective: what a training checkpoint keeps
    method.load_checkpoint_state(checkpoint, optimizer, path)

and ``method.backbone`` for evaluation and export. Logged values stay on the device; the trainer
reads them every ``frequent`` steps, so a step never waits for the host.

The checkpoint state is ``{"backbone", "head", "optimizer"}`` (the method's state dict split at
``backbone.``) plus, for Partial FC runs, every rank's class centers (``methods/sharded_state.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from methods import sharded_state
from utils.checkpoint import accept_rgb, apply_state, extract_backbone_state, load_state
from utils.dataset import get_train_dataset
from utils.distributed import DistEnv
from utils.sampler import ResumableBatchSampler, ResumableDistributedSampler

log = logging.getLogger(__name__)

__all__ = ["TrainingMethod"]


class TrainingMethod(nn.Module):
    """Base of the training methods: every hook the trainer calls besides ``forward``."""

    backbone: nn.Module

    # --- building -----------------------------------------------------------------------------
    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """Raise ConfigError for a value of this method's keys that cannot work (before any set-up)."""

    @classmethod
    def train_data(cls, cfg: Any, env: DistEnv) -> tuple[Dataset, Any]:
        """The training set and this rank's resumable batches (``set_epoch(epoch, start=k)``, ``len``)."""
        dataset = get_train_dataset(cfg.rec, num_classes=cfg.num_classes or None, seed=cfg.seed)
        sampler = ResumableDistributedSampler(dataset, env.world_size, env.rank, seed=cfg.seed)
        return dataset, ResumableBatchSampler(sampler, cfg.batch_size)

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module, env: DistEnv) -> "TrainingMethod":
        """The method with its loss modules, from a config, for the process group ``env``."""
        raise NotImplementedError(f"{cls.__name__}.from_config")

    # --- training -----------------------------------------------------------------------------
    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every trainable parameter, one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def set_epoch(self, epoch: int) -> None:
        """Called before every epoch (stage switches)."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        """``{"loss": scalar tensor, "logs": {name: detached device scalar}}`` of one batch."""
        raise NotImplementedError(f"{type(self).__name__}.forward")

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Device scalars worth logging beside the losses."""
        return {}

    def ddp_ignored_parameters(self) -> list[str]:
        """Qualified names of the parameters each rank owns alone (Partial FC's class centers)."""
        return sharded_state.sharded_parameter_names(self)

    # --- weights and checkpoints --------------------------------------------------------------
    def load_init_weights(self, path: str) -> None:
        """Start from another run's weights (``init_weights``): the backbone, then ``backbone_loaded``."""
        obj = load_state(path)
        state, meta = extract_backbone_state(obj, path)
        apply_state(self.backbone, state, meta)
        accept_rgb(self.backbone, meta["channel_order"], path)  # the training data are RGB
        notes = [f"its {meta['channel_order']} input converted to RGB"] if meta["channel_order"] != "RGB" else []
        if meta.get("layout_kwargs"):  # e.g. MagFace's BN eps: the configured backbone keeps its own
            notes.append(f"its network's {meta['layout_kwargs']} not applied to the configured backbone")
        if notes:
            log.info(f"init_weights: {path} ({meta['format']}): " + "; ".join(notes))
        self.backbone_loaded()
        self.load_init_extra(obj, meta, path)

    def backbone_loaded(self) -> None:
        """Called after ``init_weights`` put new weights into ``backbone`` (copies follow them)."""

    def load_init_extra(self, obj: Any, meta: dict[str, Any], path: str) -> None:
        """What the method takes from an ``init_weights`` file besides the backbone (nothing here)."""
        log.info(f"init_weights: backbone from {path}")

    def checkpoint_state(self, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
        """What a training checkpoint keeps of the method and its optimizer (collective: every rank calls).

        On rank 0 of a Partial FC run the sharded class centers of all ranks are in ``partial_fc``
        and left out of ``head`` and ``optimizer``; other ranks' dicts are not saved.
        """
        state = self.state_dict()
        entries = sharded_state.gather_sharded_state(self, optimizer)
        out = {
            "backbone": {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")},
            "head": {k: v for k, v in state.items() if not k.startswith("backbone.")},
            "optimizer": optimizer.state_dict(),
        }
        if entries:
            sharded_state.strip_local_shards(out["head"], out["optimizer"], self, optimizer)
            out["partial_fc"] = entries
        return out

    def load_checkpoint_state(self, checkpoint: dict[str, Any], optimizer: torch.optim.Optimizer, path: str) -> None:
        """Restore the method and its optimizer from a training checkpoint (any number of processes)."""
        state = {f"backbone.{k}": v for k, v in checkpoint["backbone"].items()}
        state.update(checkpoint["head"])
        sharded_state.load_sharded_state(checkpoint, state, checkpoint["optimizer"], self, optimizer, path)
        self.load_state_dict(state)
        optimizer.load_state_dict(checkpoint["optimizer"])
