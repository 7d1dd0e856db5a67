"""Margin-softmax heads: logits of L2-normalised embeddings against L2-normalised class centers.

The class centers are stored as ``kernel`` of shape (in_features, num_classes), the layout of
ElasticFace/ContraFace checkpoints (``header.kernel``).
"""

from __future__ import annotations

import difflib

import torch
import torch.nn.functional as F
from torch import nn

# acos has an infinite gradient at +-1; keep cosines a hair inside so a perfectly aligned
# sample cannot turn the whole step into NaN (the reference clamps to exactly [-1, 1]).
_COS_LIMIT = 1.0 - 1e-7


def _add_to_targets(x: torch.Tensor, labels: torch.Tensor, delta: float) -> torch.Tensor:
    """x with ``delta`` added at (i, labels[i]) for every labelled row (label -1 = unlabelled)."""
    rows = torch.nonzero(labels != -1).squeeze(1)
    cols = labels[rows]
    return x.index_put((rows, cols), x[rows, cols] + delta)


class MarginHead(nn.Module):
    """Base: cosine logits between normalised embeddings and class centers, in fp32."""

    default_margin = 0.0

    def __init__(self, in_features: int, out_features: int, s: float = 64.0, m: float | None = None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.s = float(s)
        self.m = float(self.default_margin if m is None else m)
        self.kernel = nn.Parameter(torch.empty(in_features, out_features))
        nn.init.normal_(self.kernel, std=0.01)

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) of every sample against every class center, (N, C) in fp32."""
        with torch.autocast(embeddings.device.type, enabled=False):
            emb = F.normalize(embeddings.float(), dim=1)
            kernel = F.normalize(self.kernel.float(), dim=0)
            return torch.mm(emb, kernel).clamp(-1, 1)

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits with the margin applied to each sample's target class (label -1: none)."""
        raise NotImplementedError

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, s={self.s}, m={self.m}"


class ArcFace(MarginHead):
    """Additive angular margin: s * cos(theta_y + m) for the target class."""

    default_margin = 0.5

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        theta = self.cosine(embeddings).clamp(-_COS_LIMIT, _COS_LIMIT).acos()
        return _add_to_targets(theta, labels, self.m).cos() * self.s


class CosFace(MarginHead):
    """Additive cosine margin: s * (cos(theta_y) - m) for the target class."""

    default_margin = 0.35

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return _add_to_targets(self.cosine(embeddings), labels, -self.m) * self.s


HEADS: dict[str, type[MarginHead]] = {"arcface": ArcFace, "cosface": CosFace}


def get_head(name: str, in_features: int, out_features: int, s: float = 64.0, m: float | None = None) -> MarginHead:
    """Build a margin head by name (``arcface``, ``cosface``)."""
    key = name.lower()
    if key not in HEADS:
        close = difflib.get_close_matches(key, HEADS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ValueError(f"unknown head {name!r}{hint} (known: {', '.join(HEADS)})")
    return HEADS[key](in_features, out_features, s=s, m=m)
