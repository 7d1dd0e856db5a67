"""The margin-head methods: the single-branch baseline (ArcFace & co.) and two-stage ContraFace.

Both score embeddings with a margin head (``losses/heads``) over all classes, or sharded across
the processes with Partial FC (``partial_fc = True``); ``init_weights`` may bring the class
centers of an earlier run along with its backbone.
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from losses.contraface import ContraFace
from losses.heads import MarginHead, check_head_config, get_head, head_params
from losses.partial_fc import PartialFC
from methods.base import TrainingMethod
from methods.sharded_state import checkpoint_centers
from utils.distributed import DistEnv
from utils.errors import ConfigError

log = logging.getLogger(__name__)

__all__ = ["ContraFaceTraining", "SingleBranch", "build_head", "switch_epoch"]


class SingleBranch(TrainingMethod):
    """Margin softmax on one dropout view: loss = head.loss(backbone(x), y) (the ArcFace baseline)."""

    def __init__(self, backbone: nn.Module, head: MarginHead, dropout: float = 0.4):
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.dropout = dropout
        self.backbone.dropout_p = dropout

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """The head and its parameters; Partial FC's sample rate."""
        check_head_config(cfg)
        if "sample_rate" in cfg and not 0.0 < cfg.sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {cfg.sample_rate!r} (dataset {cfg.dataset!r})")
        if cfg.get("sample_rate", 1.0) < 1.0 and not cfg.get("partial_fc", False):
            raise ConfigError(
                f"sample_rate {cfg.sample_rate!r} needs partial_fc = True (the replicated head scores all)"
            )

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module, env: DistEnv) -> "SingleBranch":
        return cls(backbone, build_head(cfg, env), dropout=cfg.dropout)

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        loss = self.head.loss(self.backbone(images), labels)
        return {"loss": loss, "logs": {"L1": loss.detach()}}

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The head's running state (CurricularFace t, AdaFace norm mean/std), if any."""
        head = getattr(self.head, "head", self.head)  # PartialFC wraps this rank's MarginHead
        return head.extra_state() if isinstance(head, MarginHead) else {}

    def load_init_extra(self, obj: Any, meta: dict[str, Any], path: str) -> None:
        """The class centers of the ``init_weights`` file, where they fit (this rank's block under Partial FC)."""
        kernel = self.head.kernel
        sharded = isinstance(self.head, PartialFC)
        num_classes = self.head.num_classes if sharded else kernel.shape[1]
        start, stop = self.head.class_range if sharded else (0, num_classes)
        if not (isinstance(obj, dict) and isinstance(obj.get("head"), dict)):
            obj = {"head": {"head.kernel": meta.get("header", {}).get("kernel")}}  # the original {step}model.pth
        centers, why = checkpoint_centers(obj, num_classes, start, stop)  # replicated or sharded runs
        if centers is not None and centers.shape == kernel.shape:
            with torch.no_grad():
                kernel.copy_(centers)
            log.info(f"init_weights: backbone and class centers from {path}")
            return
        log.info(f"init_weights: backbone from {path}; class centers start fresh ({why or 'they do not fit'})")


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
    def check_config(cls, cfg: Any) -> None:
        """The head's keys, then the two stages' dropout, the margin's EMA and the switch epoch."""
        super().check_config(cfg)
        if not 0.0 <= cfg.dropout2 < 1.0:
            raise ConfigError(f"dropout2 must be in [0, 1), got {cfg.dropout2!r}")
        if not 0.0 <= cfg.contra_ema <= 1.0:
            raise ConfigError(f"contra_ema must be in [0, 1], got {cfg.contra_ema!r}")
        if cfg.switch_epoch is not None and (not isinstance(cfg.switch_epoch, int) or cfg.switch_epoch < 0):
            raise ConfigError(f"switch_epoch must be a 0-based epoch index or None, got {cfg.switch_epoch!r}")

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module, env: DistEnv) -> "ContraFaceTraining":
        return cls(
            backbone,
            build_head(cfg, env),
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


def switch_epoch(cfg: Any) -> int:
    """The 0-based epoch ContraFace's stage 2 starts: ``cfg.switch_epoch``, else the first LR decay."""
    return cfg.shrink_epoch[0] - 1 if cfg.switch_epoch is None else int(cfg.switch_epoch)


def build_head(cfg: Any, env: DistEnv) -> nn.Module:
    """The margin head of ``cfg.head`` over all classes, or sharded across ``env``'s processes (Partial FC)."""
    if cfg.get("partial_fc"):
        return PartialFC(
            cfg.head, cfg.embedding_size, cfg.num_classes, cfg.sample_rate,
            rank=env.rank, world_size=env.world_size, **head_params(cfg),
        )
    return get_head(cfg.head, cfg.embedding_size, cfg.num_classes, **head_params(cfg))
