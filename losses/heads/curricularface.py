"""CurricularFace: hard negatives re-weighted by a running estimate of training progress."""

from __future__ import annotations

import math

import torch

from losses.heads.base import MarginHead, arc_cos, replace_targets, target_values


def nan_mean(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean of the non-NaN entries, whether there was any), without a host sync."""
    valid = ~torch.isnan(values)
    count = valid.sum()
    total = torch.where(valid, values, torch.zeros_like(values)).sum()
    return total / count.clamp(min=1), count > 0


class CurricularFace(MarginHead):
    """CurricularFace (Huang et al., CVPR 2020, eq. 6-10), as the authors' code.

    Target logit s·cos(θ_y + m), or s·(cos θ_y − m·sin m) where θ_y + m > π. A negative j with
    cos θ_j > cos(θ_y + m) is hard and becomes s·cos θ_j·(t + cos θ_j), others s·cos θ_j.
    t (a buffer, starts at 0) ← 0.01·mean(cos θ_y) + 0.99·t over every row of the batch,
    updated before it is used.
    """

    param_names = ("s", "m")

    def __init__(self, in_features: int, out_features: int, s: float = 64.0, m: float = 0.5):
        super().__init__(in_features, out_features, s)
        self.m = float(m)
        self.threshold = math.cos(math.pi - m)  # cos θ_y above this <=> θ_y + m < π
        self.register_buffer("t", torch.zeros(1))

    @torch.no_grad()
    def update_state(self, target_cosine: torch.Tensor) -> None:
        """t ← 0.01·mean(cos θ_y) + 0.99·t (rows with no class, NaN, left out)."""
        mean, any_row = nan_mean(target_cosine)
        self.t.copy_(torch.where(any_row, 0.01 * mean + 0.99 * self.t, self.t))

    def extra_state(self) -> dict[str, torch.Tensor]:
        """t, for the training log."""
        return {"t": self.t[0]}

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        self.update_state(target_cosine)
        t = self.t.to(cosine.dtype)
        hard = cosine > arc_cos(target_cosine, self.m).unsqueeze(1)
        logits = torch.where(hard, cosine * (t + cosine), cosine)
        cos_y = target_values(cosine, labels)
        target = torch.where(cos_y > self.threshold, arc_cos(cos_y, self.m), cos_y - self.m * math.sin(self.m))
        return replace_targets(logits, labels, target) * self.s
