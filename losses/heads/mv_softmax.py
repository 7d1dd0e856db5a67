"""MV-Softmax: a margin on the target plus a boost of the mis-classified (hard) negatives."""

from __future__ import annotations

import torch

from losses.heads.base import MarginHead, arc_cos, replace_targets, target_values


class MVSoftmax(MarginHead):
    """Mis-classified Vector guided Softmax (Wang et al., AAAI 2020, eq. 9-11).

    As the authors' SV-X-Softmax code (``MV-AM`` / ``MV-Arc`` with ``easy_margin``): a negative j
    is hard when cos θ_j > cos θ_y − m (``mv_am``) or cos θ_j > cos(θ_y + m) (``mv_arc``); a hard
    negative's cosine becomes (t + 1)·cos + t (``adaptive``) or cos + t (fixed). The target gets
    its margin only where cos θ_y > 0. Logits are scaled by s.
    """

    param_names = ("s", "m", "t", "adaptive")
    arc = False  # the margin form: False = additive cosine (MV-AM), True = additive angle (MV-Arc)

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 32.0,
        m: float = 0.35,
        t: float = 0.2,
        adaptive: bool = True,
    ):
        super().__init__(in_features, out_features, s)
        self.m, self.t, self.adaptive = float(m), float(t), bool(adaptive)

    def _with_margin(self, cos_y: torch.Tensor) -> torch.Tensor:
        return arc_cos(cos_y, self.m) if self.arc else cos_y - self.m

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        # the hard-negative rule uses the margin without the easy-margin switch, as the reference
        threshold = self._with_margin(target_cosine).unsqueeze(1)
        hard = cosine > threshold  # NaN threshold (a row with no class): no hard negatives
        boosted = (self.t + 1.0) * cosine + self.t if self.adaptive else cosine + self.t
        logits = torch.where(hard, boosted, cosine)
        cos_y = target_values(cosine, labels)
        target = torch.where(cos_y > 0, self._with_margin(cos_y), cos_y)
        return replace_targets(logits, labels, target) * self.s


class MVSoftmaxAM(MVSoftmax):
    """MV-Softmax with the additive cosine margin (``mv_am``, the authors' MV-AM)."""


class MVSoftmaxArc(MVSoftmax):
    """MV-Softmax with the additive angular margin (``mv_arc``, the authors' MV-Arc)."""

    arc = True
