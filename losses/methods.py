"""Training methods: how a batch of images and labels becomes a loss.

A method is an ``nn.Module`` that owns the backbone and its loss modules, so one
DistributedDataParallel wrapper covers everything that has parameters. The trainer only calls

    method.set_epoch(epoch)                 # stage switches (dropout, branches)
    out = method(images, labels)            # {"loss": tensor, "logs": {name: tensor}}

and ``method.backbone`` for evaluation and export.
"""

from __future__ import annotations

import difflib
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from losses.contraface import ContraFace
from losses.heads import MarginHead, get_head


class SingleBranch(nn.Module):
    """Margin softmax on one dropout view: loss = CE(head(backbone(x)), y) (the ArcFace baseline)."""

    def __init__(self, backbone: nn.Module, head: MarginHead, dropout: float = 0.4):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dropout = dropout
        self.backbone.dropout_p = dropout

    def set_epoch(self, epoch: int) -> None:
        """Called before every epoch; the single-branch method has no stages."""

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        loss = F.cross_entropy(self.head(self.backbone(images), labels), labels)
        return {"loss": loss, "logs": {"L1": loss.detach()}}

    def extra_state(self) -> dict[str, float]:
        """Scalars worth logging beside the losses."""
        return {}


class ContraFaceTraining(SingleBranch):
    """Two-stage ContraFace.

    Stage 1 (epochs before ``switch_epoch``): single branch, dropout ``dropout``.
    Stage 2: one trunk pass, two independent dropout views (p = ``dropout2``) through the shared
    FC + BN, loss = w1 CE(x1) + w2 CE(x2) + wC Contra(x1, x2) [+ wC2 Contra(x2, x1)].
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
    ):
        super().__init__(backbone, head, dropout)
        self.switch_epoch = switch_epoch
        self.dropout2 = dropout2
        self.weights = weights
        self.contra = contra if contra is not None else ContraFace()
        self.double = False

    def set_epoch(self, epoch: int) -> None:
        """Switch to the double branch (and the larger dropout) from ``switch_epoch`` on."""
        self.double = epoch >= self.switch_epoch
        self.backbone.dropout_p = self.dropout2 if self.double else self.dropout

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        if not self.double:
            return super().forward(images, labels)
        w1, w2, wc, wc2 = self.weights
        x1, x2 = self.backbone.double_forward(images)
        loss1 = F.cross_entropy(self.head(x1, labels), labels)
        loss2 = F.cross_entropy(self.head(x2, labels), labels)
        loss_c = self.contra(x1, x2, labels)
        loss = w1 * loss1 + w2 * loss2 + wc * loss_c
        logs = {"L1": loss1.detach(), "L2": loss2.detach(), "LC": loss_c.detach()}
        if wc2:
            # the reverse direction also updates the margin, as in the reference
            loss_c2 = self.contra(x2, x1, labels)
            loss = loss + wc2 * loss_c2
            logs["LC2"] = loss_c2.detach()
        return {"loss": loss, "logs": logs}

    def extra_state(self) -> dict[str, float]:
        return {"margin": self.contra.m}


METHODS = ("contraface", "single")


def build_method(cfg: Any, backbone: nn.Module) -> SingleBranch:
    """The training method named by ``cfg.method``, with its head, from a config."""
    head = get_head(cfg.head, cfg.embedding_size, cfg.num_classes, s=cfg.s, m=cfg.m)
    if cfg.method == "single":
        return SingleBranch(backbone, head, dropout=cfg.dropout)
    if cfg.method == "contraface":
        return ContraFaceTraining(
            backbone,
            head,
            switch_epoch=cfg.shrink_epoch[0] - 1,
            dropout=cfg.dropout,
            dropout2=cfg.dropout2,
            weights=(cfg.weight1, cfg.weight2, cfg.weightC, cfg.weightC2),
            contra=ContraFace(s=cfg.contra_s, ema=cfg.contra_ema),
        )
    close = difflib.get_close_matches(str(cfg.method), METHODS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise ValueError(f"unknown method {cfg.method!r}{hint} (known: {', '.join(METHODS)})")
