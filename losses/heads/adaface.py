"""AdaFace: a margin adapted to image quality, measured by the embedding norm."""

from __future__ import annotations

import math

import torch

from losses.heads.base import MarginHead, replace_targets, target_values

EPS = 1e-3  # the authors' eps: cosine clamp, theta clip and the std guard


class AdaFace(MarginHead):
    """AdaFace (Kim et al., CVPR 2022, eq. 6-11), as the authors' head.py.

    Norms clipped to [0.001, 100] and detached; μ, σ (buffers ``batch_mean`` 20, ``batch_std``
    100) ← t_alpha·batch mean / unbiased std + (1 − t_alpha)·previous, updated before use;
    ẑ = clip((‖x‖ − μ)/(σ + eps)·h, −1, 1); target logit s·(cos(clip(θ_y − m·ẑ, eps, π − eps))
    − (m + m·ẑ)), every cosine first clamped to ±(1 − eps).
    """

    param_names = ("s", "m", "h", "t_alpha")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m: float = 0.4,
        h: float = 0.333,
        t_alpha: float = 0.01,
    ):
        super().__init__(in_features, out_features, s)
        self.m, self.h, self.t_alpha = float(m), float(h), float(t_alpha)
        self.register_buffer("batch_mean", torch.ones(1) * 20)
        self.register_buffer("batch_std", torch.ones(1) * 100)

    @torch.no_grad()
    def update_state(self, safe_norms: torch.Tensor) -> None:
        """EMA of the batch mean and unbiased std of the clipped norms (N, 1)."""
        a = self.t_alpha
        self.batch_mean.copy_(a * safe_norms.mean() + (1 - a) * self.batch_mean)
        if safe_norms.shape[0] > 1:  # one row has no spread (torch.std would be NaN)
            self.batch_std.copy_(a * safe_norms.std() + (1 - a) * self.batch_std)

    def extra_state(self) -> dict[str, torch.Tensor]:
        """μ and σ of the norms, for the training log."""
        return {"norm_mean": self.batch_mean[0], "norm_std": self.batch_std[0]}

    def margin_scaler(self, norms: torch.Tensor) -> torch.Tensor:
        """ẑ of every row, (N,), from the current μ and σ (no state update, no gradient)."""
        safe = norms.detach().clamp(0.001, 100)
        z = (safe - self.batch_mean) / (self.batch_std + EPS) * self.h
        return z.clamp(-1, 1).squeeze(1)

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        self.update_state(norms.detach().clamp(0.001, 100))
        z = self.margin_scaler(norms).to(cosine.dtype)
        cosine = cosine.clamp(-1 + EPS, 1 - EPS)
        theta = torch.acos(target_values(cosine, labels))
        target = torch.cos((theta - self.m * z).clamp(EPS, math.pi - EPS)) - (self.m + self.m * z)
        return replace_targets(cosine, labels, target) * self.s
