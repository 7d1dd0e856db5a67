"""Training methods: how a batch of images and labels becomes a loss.

A method is an ``nn.Module`` that owns the backbone and its loss modules, so one
DistributedDataParallel wrapper covers everything that has parameters. The trainer only calls

    dataset, batches = Method.train_data(cfg, env)   # what a step sees (class method)
    method = Method.from_config(cfg, backbone)       # through build_method(cfg, backbone)
    method.param_groups()                   # the optimizer's parameter groups
    method.set_epoch(epoch)                 # stage switches (dropout, branches)
    out = method(images, labels)            # {"loss": tensor, "logs": {name: detached tensor}}
    method.extra_state()                    # {name: device scalar} worth logging (the margin)

and ``method.backbone`` for evaluation and export. Logged values stay on the device; the
trainer reads them only every ``frequent`` steps, so a step never waits for the host.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
from torch import nn
from torch.utils.data import Dataset

from losses.contraface import ContraFace
from losses.heads import HEAD_PARAMS, MarginHead, get_head
from losses.partial_fc import PartialFC
from losses.unimoco import UniMoCo
from utils.dataset import get_train_dataset
from utils.sampler import ResumableBatchSampler, ResumableDistributedSampler


class TrainingMethod(nn.Module):
    """Base of the training methods: the hooks the trainer calls besides ``forward``."""

    backbone: nn.Module

    @classmethod
    def train_data(cls, cfg: Any, env: Any) -> tuple[Dataset, ResumableBatchSampler]:
        """The training set and this rank's resumable batches (``set_epoch(epoch, start=k)``)."""
        dataset = get_train_dataset(cfg.rec, num_classes=cfg.num_classes or None, seed=cfg.seed)
        sampler = ResumableDistributedSampler(dataset, env.world_size, env.rank, seed=cfg.seed)
        return dataset, ResumableBatchSampler(sampler, cfg.batch_size)

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module) -> "TrainingMethod":
        """The method with its loss modules, from a config (``build_method`` calls this)."""
        raise NotImplementedError

    def param_groups(self) -> list[dict[str, Any]]:
        """The optimizer's parameter groups: every trainable parameter, one group."""
        return [{"params": [p for p in self.parameters() if p.requires_grad]}]

    def set_epoch(self, epoch: int) -> None:
        """Called before every epoch (stage switches)."""

    def backbone_loaded(self) -> None:
        """Called after ``init_weights`` put new weights into ``backbone`` (copies follow them)."""

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Device scalars worth logging beside the losses."""
        return {}


class SingleBranch(TrainingMethod):
    """Margin softmax on one dropout view: loss = head.loss(backbone(x), y) (the ArcFace baseline)."""

    def __init__(self, backbone: nn.Module, head: MarginHead, dropout: float = 0.4):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dropout = dropout
        self.backbone.dropout_p = dropout

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module) -> "SingleBranch":
        return cls(backbone, build_head(cfg), dropout=cfg.dropout)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        loss = self.head.loss(self.backbone(images), labels)
        return {"loss": loss, "logs": {"L1": loss.detach()}}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The head's running state (CurricularFace t, AdaFace norm mean/std), if any."""
        head = getattr(self.head, "head", self.head)  # PartialFC wraps this rank's MarginHead
        return head.extra_state() if isinstance(head, MarginHead) else {}


class ContraFaceTraining(SingleBranch):
    """Two-stage ContraFace.

    Stage 1 (epochs before ``switch_epoch``): single branch, dropout ``dropout``.
    Stage 2: one trunk pass, two independent dropout views (p = ``dropout2``) through the shared
    FC + BN, loss = w1 L(x1) + w2 L(x2) + wC Contra(x1, x2) [+ wC2 Contra(x2, x1)], L = head.loss
    (so a stateful head, CurricularFace or AdaFace, updates its state once per view).
    ``single=True`` is the original's ablation: stage 2 only switches the dropout to
    ``dropout2`` and keeps one branch (no second view, no contrastive loss).
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: MarginHead,
        switch_epoch: int,
        dropout: float = 0.4,
        dropout2: float = 0.6,
        weights: tuple[float, float, float, float] = (0.5, 0.5, 0.05, 0.0),
        contra: ContraFace | None = None,
        single: bool = False,
    ):
        super().__init__(backbone, head, dropout)
        self.switch_epoch = switch_epoch
        self.single = single
        self.dropout2 = dropout2
        self.weights = weights
        self.contra = contra if contra is not None else ContraFace()
        self.double = False

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module) -> "ContraFaceTraining":
        return cls(
            backbone,
            build_head(cfg),
            switch_epoch=switch_epoch(cfg),
            dropout=cfg.dropout,
            dropout2=cfg.dropout2,
            weights=(cfg.weight1, cfg.weight2, cfg.weightC, cfg.weightC2),
            contra=ContraFace(s=cfg.contra_s, ema=cfg.contra_ema),
            single=cfg.single,
        )

    def set_epoch(self, epoch: int) -> None:
        """Switch to the double branch (and the larger dropout) from ``switch_epoch`` on."""
        self.double = epoch >= self.switch_epoch
        self.backbone.dropout_p = self.dropout2 if self.double else self.dropout

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        if not self.double or self.single:
            return super().forward(images, labels)
        w1, w2, wc, wc2 = self.weights
        x1, x2 = self.backbone.double_forward(images)
        loss1 = self.head.loss(x1, labels)
        loss2 = self.head.loss(x2, labels)
        loss_c = self.contra(x1, x2, labels)
        loss = w1 * loss1 + w2 * loss2 + wc * loss_c
        logs = {"L1": loss1.detach(), "L2": loss2.detach(), "LC": loss_c.detach()}
        if wc2:
            # the reverse direction also updates the margin, as in the reference
            loss_c2 = self.contra(x2, x1, labels)
            loss = loss + wc2 * loss_c2
            logs["LC2"] = loss_c2.detach()
        return {"loss": loss, "logs": logs}

    def extra_state(self) -> dict[str, torch.Tensor]:
        return {"margin": self.contra.margin, **super().extra_state()}


METHODS: dict[str, type[TrainingMethod]] = {
    "contraface": ContraFaceTraining,
    "single": SingleBranch,
    "unimoco": UniMoCo,  # FaceCL's contrastive training (losses/unimoco.py; no margin head)
}


def switch_epoch(cfg: Any) -> int:
    """The 0-based epoch ContraFace's stage 2 starts: ``cfg.switch_epoch``, else the first LR decay."""
    return cfg.shrink_epoch[0] - 1 if cfg.switch_epoch is None else int(cfg.switch_epoch)


def head_params(cfg: Any) -> dict[str, Any]:
    """The head parameters set in ``cfg`` (a None or missing key: the head's own default)."""
    return {key: cfg[key] for key in HEAD_PARAMS if cfg.get(key) is not None}


def build_head(cfg: Any) -> nn.Module:
    """The margin head of ``cfg.head`` over all classes, or sharded across the processes (Partial FC)."""
    if cfg.get("partial_fc"):  # losses/partial_fc.py
        return PartialFC(cfg.head, cfg.embedding_size, cfg.num_classes, cfg.sample_rate, **head_params(cfg))
    return get_head(cfg.head, cfg.embedding_size, cfg.num_classes, **head_params(cfg))


def build_method(cfg: Any, backbone: nn.Module) -> TrainingMethod:
    """The training method named by ``cfg.method``, with its loss modules, from a config."""
    if cfg.method not in METHODS:
        close = difflib.get_close_matches(str(cfg.method), METHODS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown method {cfg.method!r}{hint} (known: {', '.join(METHODS)})")
    return METHODS[cfg.method].from_config(cfg, backbone)
