"""UniMoCo's unified contrastive loss (FaceCL): every queue entry of the query's class is a positive.

The training method that builds the logits and targets (momentum encoder, queues) is
``methods/unimoco.py``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["UnifiedContrastive"]


class UnifiedContrastive(nn.Module):
    """UniMoCo's loss: mean_i log(1 + sum_neg exp(l_ij + margin) * sum_pos exp(-l_ip)).

    ``logits`` (N, M), ``targets`` (N, M) of 0/1 (or bool): 1 marks a positive. Computed in fp32
    with log-sum-exps (FaceCL sums the exponentials directly, which overflows for logits past
    ~88; the value is the same where FaceCL's is finite). A row with no positive or no negative
    contributes 0, with zero gradient and no NaN, as FaceCL's formula gives for an empty sum.
    """

    def __init__(self, margin: float = 0.0):
        super().__init__()
        self.margin = float(margin)

    def per_row(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of every row, (N,) fp32."""
        with torch.autocast(logits.device.type, enabled=False):
            if logits.dtype != torch.float64:  # float64 stays (gradcheck)
                logits = logits.float()
            pos = targets.bool() if targets.dtype == torch.bool else targets != 0
            neg = ~pos
            valid = pos.any(1) & neg.any(1)
            # an invalid row gets finite fillers instead of -inf, so that neither its value nor
            # its (discarded) gradient is ever NaN
            fill = torch.where(valid, float("-inf"), 0.0).to(logits.dtype)[:, None]
            log_neg = torch.logsumexp(torch.where(neg, logits + self.margin, fill), dim=1)
            log_pos = torch.logsumexp(torch.where(pos, -logits, fill), dim=1)
            loss = F.softplus(log_neg + log_pos)  # log(1 + exp(a + b)) = log(1 + S_neg * S_pos)
            return torch.where(valid, loss, torch.zeros_like(loss))

    def forward(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The mean loss over the rows (scalar fp32)."""
        return self.per_row(logits, targets).mean()
