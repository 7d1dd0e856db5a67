"""MagFace: a margin that grows with the embedding norm, plus a regulariser on the norm."""

from __future__ import annotations

import torch

from losses.heads.base import MarginHead, arc_cos, replace_targets, target_values


class MagFace(MarginHead):
    """MagFace (Meng et al., CVPR 2021, eq. 3-5), as the authors' MagLinear/MagLoss (easy margin).

    a = clamp(‖x‖, l_a, u_a) (gradient kept inside the range), m(a) = l_m + (u_m − l_m)·(a − l_a)
    / (u_a − l_a); target logit s·cos(θ_y + m(a)) where cos θ_y > 0, else s·cos θ_y. The loss adds
    lambda_g·mean(g(a)), g(a) = a / u_a² + 1 / a.
    """

    param_names = ("s", "l_a", "u_a", "l_m", "u_m", "lambda_g")

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        l_a: float = 10.0,
        u_a: float = 110.0,
        l_m: float = 0.45,
        u_m: float = 0.8,
        lambda_g: float = 35.0,
    ):
        super().__init__(in_features, out_features, s)
        self.l_a, self.u_a, self.l_m, self.u_m = float(l_a), float(u_a), float(l_m), float(u_m)
        self.lambda_g = float(lambda_g)

    def margin(self, norms: torch.Tensor) -> torch.Tensor:
        """m(a) for every row, (N,)."""
        a = norms.clamp(self.l_a, self.u_a).squeeze(1)
        return (self.u_m - self.l_m) / (self.u_a - self.l_a) * (a - self.l_a) + self.l_m

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        cos_y = target_values(cosine, labels)
        target = torch.where(cos_y > 0, arc_cos(cos_y, self.margin(norms).to(cosine.dtype)), cos_y)
        return replace_targets(cosine, labels, target) * self.s

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor:
        """lambda_g · mean(a / u_a² + 1 / a), a = clamp(‖x‖, l_a, u_a)."""
        a = norms.clamp(self.l_a, self.u_a)
        return self.lambda_g * (a / self.u_a**2 + 1.0 / a).mean()
