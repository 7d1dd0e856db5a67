"""ContraFace: the sample-guided contrastive loss with an adaptive margin (CoReFace, arXiv 2304.11668).

Two dropout views a, b of the same batch are compared all-against-all: the positive of row i is
column i (the other view of the same image); other images of the same class are neither
positive nor negative (their similarity is set to 0); every other image is a negative. The
margin subtracted from the positives follows the batch's mean gap between the positive and
the hardest negative.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class ContraFace(nn.Module):
    """``ContraFace()(feature1, feature2, label)`` -> loss; the current margin is ``.m``."""

    def __init__(self, s: float = 64.0, ema: float = 0.99):
        super().__init__()
        self.s = float(s)
        self.ema = float(ema)
        # float64 like the reference's Python float; a buffer so it is saved, moved and not
        # synchronised to the host every step (read .m only when logging)
        self.register_buffer("margin", torch.zeros((), dtype=torch.float64))

    @property
    def m(self) -> float:
        """The current adaptive margin."""
        return float(self.margin)

    def similarity(self, feature1: torch.Tensor, feature2: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """Masked cosine matrix S (N x N): same-class off-diagonal entries set to 0."""
        a = F.normalize(feature1.float(), dim=1)
        b = F.normalize(feature2.float(), dim=1)
        sim = torch.mm(a, b.t()).clamp(-1, 1)
        same_class = label[:, None] == label[None, :]
        off_diagonal = ~torch.eye(len(label), dtype=torch.bool, device=label.device)
        return sim.masked_fill(same_class & off_diagonal, 0.0)

    @torch.no_grad()
    def update_margin(self, sim: torch.Tensor) -> None:
        """m <- ema * mean(positive - hardest negative) + (1 - ema) * m, as the reference."""
        sim = sim.detach()
        eye = torch.eye(len(sim), dtype=torch.bool, device=sim.device)
        positive = sim.diagonal()
        hardest_negative = sim.masked_fill(eye, 0.0).max(dim=1).values
        batch_margin = (positive - hardest_negative).mean().to(torch.float64)
        # the reference weights the *new* batch value by 0.99; kept for fidelity
        self.margin.mul_(1.0 - self.ema).add_(self.ema * batch_margin)

    def forward(self, feature1: torch.Tensor, feature2: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        with torch.autocast(feature1.device.type, enabled=False):
            sim = self.similarity(feature1, feature2, label)
            self.update_margin(sim)
            eye = torch.eye(len(sim), dtype=sim.dtype, device=sim.device)
            logits = self.s * (sim - self.margin.to(sim.dtype) * eye)
            target = torch.arange(len(sim), device=sim.device)
            return F.cross_entropy(logits, target)

    def extra_repr(self) -> str:
        return f"s={self.s}, ema={self.ema}"
