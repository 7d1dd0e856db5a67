"""The interface every backbone offers the training methods (trunk, head, two dropout views), and the registry.

    forward_trunk(x)  -> flattened last feature map (N, D)
    forward_head(f)   -> embedding (fc + BatchNorm1d; no dropout)
    forward(x)        -> forward_head(dropout(forward_trunk(x)))
    double_forward(x) -> the trunk once, the head on two independent dropout draws (ContraFace)
    dropout_p         -> the dropout probability, settable between stages

Each builder registers itself in :data:`BACKBONES` beside its definition, under its canonical
name and the insightface/FaceCL short name (``r50``, ``mbf``), so configs from either ecosystem
work unchanged.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from utils.registry import Registry

# Spatial size of the last feature map for a 112x112 input (four stride-2 stages).
FEATURE_MAP_SIZE = 7

BACKBONES: Registry[Callable[..., nn.Module]] = Registry("backbone")


class FaceBackbone(nn.Module):
    """Base of the backbones: subclasses set ``self.dropout`` and define trunk and head."""

    dropout: nn.Dropout

    def forward_trunk(self, x: torch.Tensor) -> torch.Tensor:
        """Image batch (N, 3, 112, 112) -> flattened last feature map (N, D)."""
        raise NotImplementedError

    def forward_head(self, flat: torch.Tensor) -> torch.Tensor:
        """Flattened feature map (N, D) -> embedding (N, num_features); no dropout here."""
        raise NotImplementedError

    @property
    def dropout_p(self) -> float:
        """Dropout probability on the flattened trunk output (settable, in [0, 1))."""
        return self.dropout.p

    @dropout_p.setter
    def dropout_p(self, p: float) -> None:
        p = float(p)
        # p = 1 would divide by zero in inverted dropout (scale 1/(1-p)).
        if not 0.0 <= p < 1.0:
            raise ValueError(f"{type(self).__name__}: dropout must be in [0, 1), got {p}")
        self.dropout.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Single-branch embedding: trunk, dropout (in train mode), head."""
        return self.forward_head(self.dropout(self.forward_trunk(x)))

    def double_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One trunk pass, two independent inverted-dropout masks, the same head on each view.

        Each F.dropout call samples its own Bernoulli(1-p) mask from the torch RNG and scales
        kept units by 1/(1-p); in eval mode both are the identity, so the two views are equal.
        """
        flat = self.forward_trunk(x)
        p, training = self.dropout.p, self.dropout.training
        return self.forward_head(F.dropout(flat, p, training)), self.forward_head(F.dropout(flat, p, training))


def check_feature_map(model: nn.Module, in_hw: tuple, fmap: torch.Tensor) -> None:
    """Raise a clear error unless the last feature map is 7x7 (what the head is sized for)."""
    # Skipped while tracing (ONNX export): shapes are fixed there and the check would warn.
    if torch.jit.is_tracing() or tuple(fmap.shape[-2:]) == (FEATURE_MAP_SIZE, FEATURE_MAP_SIZE):
        return
    raise ValueError(
        f"{type(model).__name__}: input of size {in_hw[0]}x{in_hw[1]} gives a "
        f"{fmap.shape[-2]}x{fmap.shape[-1]} final feature map, but the head needs "
        f"{FEATURE_MAP_SIZE}x{FEATURE_MAP_SIZE}: use 112x112 aligned face crops"
    )
