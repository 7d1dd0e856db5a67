"""The margin-head interface: cosine logits against class centers, a margin on the target class.

A head is split in the parts Partial FC composes across shards (see ``MarginHead``):
``cosine`` (normalise, one matmul), ``margin_logits`` (the head's formula on a block of columns),
``regularizer`` (a per-batch term on the embedding norms). ``forward`` and ``loss`` are the
single-process composition of the three.
"""

from __future__ import annotations

import contextlib
import inspect
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

# acos has an infinite gradient at +-1; keep cosines a hair inside so a perfectly aligned
# sample cannot turn the whole step into NaN (the reference clamps to exactly [-1, 1]).
COS_LIMIT = 1.0 - 1e-7


@contextlib.contextmanager
def full_precision(tensor: torch.Tensor) -> Iterator[None]:
    """Autocast off on ``tensor``'s device: margins and softmax are computed in fp32 (or fp64)."""
    with torch.autocast(tensor.device.type, enabled=False):
        yield


def compute_dtype(tensor: torch.Tensor) -> torch.dtype:
    """fp32 for half/bf16/fp32 inputs, fp64 for fp64 inputs (gradcheck)."""
    return torch.promote_types(torch.float32, tensor.dtype)


def target_values(cosine: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """cos(theta_y) of every row at its label column (with grad), (N,); -1 rows read column 0."""
    return cosine.gather(1, labels.clamp(min=0).unsqueeze(1)).squeeze(1)


def replace_targets(logits: torch.Tensor, labels: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """``logits`` with ``values[i]`` at (i, labels[i]) for every row whose label is not -1.

    Out of place and without a host sync (no ``nonzero``): -1 rows write their own value back.
    """
    index = labels.clamp(min=0).unsqueeze(1)
    keep = logits.gather(1, index)
    new = torch.where(labels.unsqueeze(1) >= 0, values.unsqueeze(1).to(logits.dtype), keep)
    return logits.scatter(1, index, new)


def arc_cos(cos: torch.Tensor, margin: torch.Tensor | float) -> torch.Tensor:
    """cos(theta + margin) with theta = acos(cos), the cosine kept inside +-COS_LIMIT."""
    return torch.cos(torch.acos(cos.clamp(-COS_LIMIT, COS_LIMIT)) + margin)


class MarginHead(nn.Module):
    """Base of every margin softmax: class centers ``kernel`` (in_features, out_features).

    Subclasses set ``param_names`` (their keyword parameters, the config key names, defaults in their
    ``__init__`` signature) and implement ``margin_logits``; buffers hold any running state.
    """

    param_names: tuple[str, ...] = ("s",)

    def __init__(self, in_features: int, out_features: int, s: float = 64.0):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.s = float(s)
        self.kernel = nn.Parameter(torch.empty(in_features, out_features))
        nn.init.normal_(self.kernel, std=0.01)

    @classmethod
    def defaults(cls) -> dict[str, Any]:
        """The default of every parameter in ``param_names``, read from ``__init__``."""
        signature = inspect.signature(cls.__init__).parameters
        return {name: signature[name].default for name in cls.param_names}

    def cosine(self, embeddings: torch.Tensor) -> torch.Tensor:
        """cos(theta) of every row against every class center, (N, C), fp32 (fp64 for fp64 input)."""
        with full_precision(embeddings):
            dtype = compute_dtype(embeddings)
            emb = F.normalize(embeddings.to(dtype), dim=1)
            kernel = F.normalize(self.kernel.to(dtype), dim=0)
            return torch.mm(emb, kernel).clamp(-1, 1)

    def margin_logits(
        self, cosine: torch.Tensor, labels: torch.Tensor, target_cosine: torch.Tensor, norms: torch.Tensor
    ) -> torch.Tensor:
        """Scaled logits (N, C') of ``cosine`` (N, C') with the head's margin.

        labels: the row's column in ``cosine`` or -1 when its class is not among these columns
        (no target margin in this block); target_cosine: detached cos(theta_y) of every row
        wherever its class lives (NaN for a row with no class at all); norms: (N, 1) embedding
        norms with grad. Updates the head's state buffers from all N rows, before using them.
        """
        raise NotImplementedError

    def extra_state(self) -> dict[str, torch.Tensor]:
        """The running state as 0-d device tensors, for the training log (none by default)."""
        return {}

    def regularizer(self, norms: torch.Tensor) -> torch.Tensor:
        """Loss term on the embedding norms (N, 1): zero except for MagFace."""
        return norms.new_zeros(())

    def _logits_and_norms(self, embeddings: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with full_precision(embeddings):
            labels = labels.long()
            norms = embeddings.to(compute_dtype(embeddings)).norm(dim=1, keepdim=True)
            cosine = self.cosine(embeddings)
            target = target_values(cosine, labels).detach()
            # a -1 row here has no class at all: NaN keeps it out of hard-negative rules and
            # out of target-cosine statistics (comparisons with NaN are False)
            target = torch.where(labels >= 0, target, torch.full_like(target, float("nan")))
            return self.margin_logits(cosine, labels, target, norms), norms

    def forward(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scaled logits (N, C) of raw embeddings (N, D), margins on the labelled rows (-1: none)."""
        return self._logits_and_norms(embeddings, labels)[0]

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The head's training loss: mean cross-entropy over labelled rows plus ``regularizer``."""
        logits, norms = self._logits_and_norms(embeddings, labels)
        with full_precision(logits):
            return F.cross_entropy(logits, labels.long(), ignore_index=-1) + self.regularizer(norms)

    def extra_repr(self) -> str:
        params = ", ".join(f"{name}={getattr(self, name)}" for name in self.param_names)
        return f"in_features={self.in_features}, out_features={self.out_features}, {params}"
