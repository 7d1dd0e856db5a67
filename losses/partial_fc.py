"""Partial FC: the class centers of a margin head sharded across processes (An et al., 2022).

Each of the W processes holds the centers of a contiguous block of classes, split as
insightface's ``partial_fc_v2`` does. A step all-gathers the embeddings and labels, scores the
whole global batch against this rank's block (its positives plus a random ``sample_rate`` share
of its other centers) and takes the softmax across blocks with all-reduced maxima and sums,
so no process ever holds the (N, C) logits of all classes.

Gradients. Every rank computes the same loss (the global-batch mean). The gradient of this
rank's block reaches its centers directly (no DDP all-reduce: the training method lists the kernel
in ``ddp_ignored_parameters``). The embeddings' gradient is summed over the blocks and then
multiplied by W, so DDP's averaging of the backbone gradients gives the full-FC gradient.

Unsampled centers (sample_rate < 1) get an exact zero gradient: the kernel is indexed, as in
insightface v2, not copied into a sub-parameter as in v1. So SGD still applies weight decay and
momentum to them as to any parameter with a zero gradient (their momentum decays by
``momentum`` each step and keeps moving them a little): insightface v2's behaviour.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from losses.heads import MarginHead, get_head
from losses.heads.base import compute_dtype, full_precision, target_values
from utils.errors import ConfigError


def class_split(num_classes: int, world_size: int, rank: int) -> tuple[int, int]:
    """(class_start, num_local) of ``rank``: C // W classes each, the first C % W ranks one more."""
    base, extra = divmod(num_classes, world_size)
    return base * rank + min(rank, extra), base + int(rank < extra)


def _rank_and_world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class _AllGather(torch.autograd.Function):
    """Concatenate every rank's rows; backward: sum the gradients over ranks, keep ours, times W."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        rank, world = _rank_and_world()
        ctx.rank, ctx.world, ctx.rows = rank, world, tensor.shape[0]
        if world == 1:
            return tensor.clone()
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        if ctx.world > 1:
            # each rank holds only its block's part of d loss / d embeddings: add them up
            dist.all_reduce(grad)
        # times W: DDP divides the backbone gradients by W again, so the backbone gets the full-FC gradient
        return grad[ctx.rank * ctx.rows : (ctx.rank + 1) * ctx.rows] * ctx.world


def _all_reduce(tensor: torch.Tensor, op: Any = None) -> torch.Tensor:
    """In-place all-reduce (SUM unless ``op``), a no-op on one process."""
    if _rank_and_world()[1] > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM if op is None else op)
    return tensor


class _DistCrossEntropy(torch.autograd.Function):
    """Mean softmax cross-entropy of logits split by columns across ranks.

    logits (N, C_local), labels (N,) the column here or -1 (the row's class is on another rank).
    Every rank returns the same mean over all N rows; the backward gives this rank's columns
    (softmax - one_hot) / N, the gradient of that shared loss.
    """

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        rows = logits.shape[0]
        top = _all_reduce(logits.max(dim=1, keepdim=True).values, dist.ReduceOp.MAX)
        probs = (logits - top).exp_()
        total = _all_reduce(probs.sum(dim=1, keepdim=True))
        # the target logit lives on one rank; the others add 0
        target = _all_reduce(torch.where(labels >= 0, target_values(logits, labels), logits.new_zeros(())))
        # log-sum-exp minus the target logit: no log of a tiny probability
        loss = (total.log().squeeze(1) + top.squeeze(1) - target).mean()
        probs.div_(total)
        ctx.save_for_backward(probs, labels)
        ctx.rows = rows
        return loss

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        probs, labels = ctx.saved_tensors
        index = labels.clamp(min=0).unsqueeze(1)
        one_hot = (labels >= 0).unsqueeze(1).to(probs.dtype)
        grad_logits = probs.scatter_add(1, index, -one_hot)
        return grad_logits * (grad / ctx.rows), None


class PartialFC(nn.Module):
    """A margin head whose class centers are sharded across the ranks of the process group.

    ``head``: a head name (``get_head``) or a factory ``head(in_features, out_features,
    **head_params)`` such as a MarginHead class; ``self.head`` is this rank's head for the classes
    [class_start, class_start + num_local). ``pfc(local_embeddings, local_labels)`` (or
    ``pfc.loss(...)``) is the loss of the global batch, the same on every rank. ``rank`` and
    ``world_size`` name this process's place in the group (the training methods pass theirs);
    left out, they are read from the initialised process group (world size 1 without one).
    """

    def __init__(
        self,
        head: str | Callable[..., MarginHead],
        embedding_size: int,
        num_classes: int,
        sample_rate: float = 1.0,
        *,
        rank: int | None = None,
        world_size: int | None = None,
        **head_params: Any,
    ):
        super().__init__()
        if not 0.0 < sample_rate <= 1.0:
            raise ConfigError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        group_rank, group_size = _rank_and_world()
        self.rank = group_rank if rank is None else int(rank)
        self.world_size = group_size if world_size is None else int(world_size)
        if self.world_size > num_classes:
            raise ConfigError(
                f"partial_fc: world size {self.world_size} is larger than num_classes {num_classes}; "
                "every rank needs at least one class (use the replicated head: partial_fc = False)"
            )
        self.embedding_size, self.num_classes, self.sample_rate = embedding_size, num_classes, float(sample_rate)
        self.class_start, self.num_local = class_split(num_classes, self.world_size, self.rank)
        # at least one column: a rank whose block has no positive in the batch still scores one
        # negative (an empty block would leave the softmax's max without elements)
        self.num_sample = max(1, int(self.sample_rate * self.num_local))
        build = functools.partial(get_head, head) if isinstance(head, str) else head
        self.head: MarginHead = build(embedding_size, self.num_local, **head_params)
        self._labels_checked = False

    @property
    def kernel(self) -> nn.Parameter:
        """This rank's class centers, (embedding_size, num_local)."""
        return self.head.kernel

    @property
    def class_range(self) -> tuple[int, int]:
        """[start, stop) of the classes this rank holds."""
        return self.class_start, self.class_start + self.num_local

    def class_ranges(self) -> list[tuple[int, int]]:
        """[start, stop) of every rank's classes, in rank order."""
        ranges = []
        for rank in range(self.world_size):
            start, count = class_split(self.num_classes, self.world_size, rank)
            ranges.append((start, start + count))
        return ranges

    def _check_labels(self, labels: torch.Tensor) -> None:
        # a label outside [0, C) would be owned by no rank and silently lose its target logit;
        # checked once on a GPU (a host sync), on every step on the CPU (free)
        if self._labels_checked and labels.device.type != "cpu":
            return
        self._labels_checked = True
        if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= self.num_classes):
            bad = labels[(labels < 0) | (labels >= self.num_classes)]
            raise ValueError(f"label {int(bad[0])} is outside [0, {self.num_classes}) (num_classes)")

    @torch.no_grad()
    def sample(self, local_labels: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        """(sampled columns or None for all, labels remapped to them) for this rank's block.

        ``local_labels``: the global batch's labels minus class_start, -1 where not in this block.
        The positives are always kept; the rest of ``num_sample`` are random others (torch's
        global RNG on the kernel's device, which the trainer's checkpoints capture).
        """
        if self.num_sample >= self.num_local:
            return None, local_labels
        own = local_labels >= 0
        positives = torch.unique(local_labels[own], sorted=True)
        if positives.numel() >= self.num_sample:
            index = positives  # insightface's rule: only the positives when they are more
        else:
            score = torch.rand(self.num_local, device=local_labels.device)
            score[positives] = 2.0  # above any uniform draw: always chosen
            index = torch.topk(score, self.num_sample).indices.sort().values
        remapped = torch.where(own, torch.searchsorted(index, local_labels.clamp(min=0)), local_labels)
        return index, remapped

    def forward(self, local_embeddings: torch.Tensor, local_labels: torch.Tensor) -> torch.Tensor:
        """Loss of the global batch (mean CE over every rank's rows plus the head's regulariser)."""
        local_labels = local_labels.reshape(-1).long()
        if self.world_size > 1:
            parts = [torch.empty_like(local_labels) for _ in range(self.world_size)]
            dist.all_gather(parts, local_labels)
            labels = torch.cat(parts)
        else:
            labels = local_labels
        self._check_labels(labels)
        embeddings = _AllGather.apply(local_embeddings)

        start, stop = self.class_range
        own = (labels >= start) & (labels < stop)
        local = torch.where(own, labels - start, torch.full_like(labels, -1))
        index, local = self.sample(local)

        with full_precision(embeddings):
            dtype = compute_dtype(embeddings)
            embeddings = embeddings.to(dtype)
            norms = embeddings.norm(dim=1, keepdim=True)
            kernel = self.head.kernel if index is None else self.head.kernel[:, index]  # zero grad elsewhere
            cosine = torch.mm(F.normalize(embeddings, dim=1), F.normalize(kernel.to(dtype), dim=0)).clamp(-1, 1)
            with torch.no_grad():
                # every row's cos(theta_y), from the rank that holds its class
                target = torch.where(local >= 0, target_values(cosine, local), cosine.new_zeros(()))
                target = _all_reduce(target)
            logits = self.head.margin_logits(cosine, local, target, norms)
            loss = _DistCrossEntropy.apply(logits, local)
            regularizer = self.head.regularizer(norms)
        # the regulariser is the same on every rank and its gradient would be summed W times
        # by the all-gather's backward: only rank 0 lets it through
        return loss + (regularizer if self.rank == 0 else regularizer.detach())

    def loss(self, embeddings: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Same as calling the module: the training methods call ``head.loss``."""
        return self(embeddings, labels)

    def extra_repr(self) -> str:
        return (
            f"num_classes={self.num_classes}, rank={self.rank}/{self.world_size}, "
            f"classes=[{self.class_start}, {self.class_start + self.num_local}), sample_rate={self.sample_rate}"
        )

