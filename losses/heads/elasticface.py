"""ElasticFace: ArcFace / CosFace with a per-sample margin drawn from a normal distribution."""

from __future__ import annotations

import torch

from losses.heads.base import MarginHead, arc_cos, replace_targets, target_values


class ElasticMargin(MarginHead):
    """ElasticFace (Boutros et al., CVPRW 2022, eq. 4-6), as the authors' code.

    Every call draws one margin per row from N(m, std) with the torch global RNG (so the
    trainer's RNG capture makes a resume exact). ``plus`` (ElasticFace+): the margins are sorted
    ascending and row k takes sorted[order[k]], order = the rows by target cosine descending:
    the indexing of the authors' code, kept as it is.
    """

    param_names = ("s", "m", "std", "plus")
    arc = True

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m: float = 0.5,
        std: float = 0.05,
        plus: bool = False,
    ):
        super().__init__(in_features, out_features, s)
        self.m, self.std, self.plus = float(m), float(std), bool(plus)

    def draw_margins(self, target_cosine: torch.Tensor) -> torch.Tensor:
        """One margin per row (N,), drawn for every row whichever columns it has here."""
        margins = torch.normal(self.m, self.std, size=target_cosine.shape, device=target_cosine.device)
        margins = margins.to(target_cosine.dtype)
        if self.plus:
            order = torch.argsort(torch.nan_to_num(target_cosine, nan=-2.0), descending=True)
            margins = torch.sort(margins).values[order]
        return margins

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        margins = self.draw_margins(target_cosine)
        cos_y = target_values(cosine, labels)
        target = arc_cos(cos_y, margins) if self.arc else cos_y - margins
        return replace_targets(cosine, labels, target) * self.s


class ElasticArcFace(ElasticMargin):
    """ElasticFace-Arc: target logit s·cos(θ_y + m_i), m_i ~ N(m, std)."""


class ElasticCosFace(ElasticMargin):
    """ElasticFace-Cos: target logit s·(cos θ_y − m_i), m_i ~ N(m, std)."""

    arc = False

    def __init__(
        self,
        in_features: int,
        out_features: int,
        s: float = 64.0,
        m: float = 0.35,
        std: float = 0.05,
        plus: bool = False,
    ):
        super().__init__(in_features, out_features, s, m, std, plus)
