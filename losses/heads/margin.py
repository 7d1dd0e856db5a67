"""Fixed additive margins: ArcFace, CosFace and insightface's combined margin."""

from __future__ import annotations

import torch

from losses.heads.base import COS_LIMIT, MarginHead, arc_cos, replace_targets, target_values


class ArcFace(MarginHead):
    """ArcFace (Deng et al., CVPR 2019, eq. 3): target logit s·cos(θ_y + m), others s·cos θ.

    As ElasticFace/ContraFace compute it: cos(acos(cos θ) + m) with its true gradient and no
    switch where θ + m > π (insightface's easy-margin/threshold variants are not used).
    """

    param_names = ("s", "m")

    def __init__(self, in_features: int, out_features: int, s: float = 64.0, m: float = 0.5):
        super().__init__(in_features, out_features, s)
        self.m = float(m)

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        target = arc_cos(target_values(cosine, labels), self.m)
        return replace_targets(cosine, labels, target) * self.s


class CosFace(MarginHead):
    """CosFace (Wang et al., CVPR 2018, eq. 4): target logit s·(cos θ_y − m), others s·cos θ."""

    param_names = ("s", "m")

    def __init__(self, in_features: int, out_features: int, s: float = 64.0, m: float = 0.35):
        super().__init__(in_features, out_features, s)
        self.m = float(m)

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        return replace_targets(cosine, labels, target_values(cosine, labels) - self.m) * self.s


class CombinedMargin(MarginHead):
    """Combined margin (ArcFace paper, eq. 4; insightface's MXNet ``combined`` loss).

    Target logit s·(cos(m1·θ_y + m2) − m3), no θ switch, as insightface's MXNet code.
    """

    param_names = ("s", "m1", "m2", "m3")

    def __init__(
        self, in_features: int, out_features: int, s: float = 64.0, m1: float = 1.0, m2: float = 0.3, m3: float = 0.2
    ):
        super().__init__(in_features, out_features, s)
        self.m1, self.m2, self.m3 = float(m1), float(m2), float(m3)

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        cos_y = target_values(cosine, labels).clamp(-COS_LIMIT, COS_LIMIT)
        target = torch.cos(self.m1 * torch.acos(cos_y) + self.m2) - self.m3
        return replace_targets(cosine, labels, target) * self.s
