"""UniMoCo as FaceCL trains it: a momentum key encoder, feature + label queues, the unified loss.

Per step, in FaceCL's order:

    q = normalize(projection_q(backbone(view1)))                      # with grad
    momentum update of the key encoder, then, without grad:
    k = normalize(projection_k(encoder_k(view2)))  with batch-shuffle BN across ranks
    enqueue all ranks' (k, label) at queue_ptr                       # before the logits
    logits = q . queue / T,  targets = (label_queue == label) & (label != -1)
    loss = UnifiedContrastive(margin)(logits, targets)

so a sample's own key and its group-mates (the sampler puts ``samples_per_label`` images of one
class in a batch) are its positives. ``own_key_positive=True`` is the UniMoCo paper's variant for
unlabelled data: the own key is an extra positive column and the enqueue comes after the logits.
"""

from __future__ import annotations

import copy
import math
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from losses.unimoco import UnifiedContrastive
from methods.base import TrainingMethod
from utils.distributed import DistEnv
from utils.errors import ConfigError
from utils.sampler import DistributedClassGroupSampler
from utils.views import AUGMENTATIONS, two_view_train_set

__all__ = ["UNIMOCO_KEYS", "UniMoCo", "batch_shuffle", "batch_unshuffle", "check_unimoco_config", "make_projection"]


def make_projection(in_features: int, dim: int, mlp: Any = None) -> nn.Module:
    """FaceCL's projection head: Linear(in, dim), or Linear-ReLU-Linear with the ``mlp`` hidden width.

    ``mlp``: None (one linear layer), "same_in" (hidden = in_features), "same_out" (hidden = dim)
    or an int. ``True`` is refused: FaceCL's ``int(True)`` silently made a 1-unit bottleneck.
    """
    if mlp is None:
        return nn.Linear(in_features, dim)
    if isinstance(mlp, bool):
        raise ValueError(f"moco_mlp={mlp!r}: use None, 'same_in', 'same_out' or a hidden width (int)")
    if mlp == "same_in":
        hidden = in_features
    elif mlp == "same_out":
        hidden = dim
    elif isinstance(mlp, int) or (isinstance(mlp, str) and mlp.isdigit()):
        hidden = int(mlp)
    else:
        raise ValueError(f"moco_mlp={mlp!r}: use None, 'same_in', 'same_out' or a hidden width (int)")
    if hidden <= 0:
        raise ValueError(f"moco_mlp={mlp!r}: the hidden width must be positive")
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, dim))


# --------------------------------------------------------------------------------------------
# collectives (plain identities with one process)
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def concat_all_gather(tensor: torch.Tensor, world: int) -> torch.Tensor:
    """Every rank's ``tensor`` concatenated along dim 0 in rank order (no gradient; ``world`` processes)."""
    if world == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts, dim=0)


@torch.no_grad()
def batch_shuffle(x: torch.Tensor, rank: int = 0, world: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of the globally shuffled batch, and the permutation that undoes it.

    All ranks draw a permutation from their torch RNG (FaceCL's ``randperm``; it keeps the RNG
    streams in step) and use rank 0's, broadcast. With one process it is a plain permutation.
    """
    gathered = concat_all_gather(x, world)
    idx_shuffle = torch.randperm(gathered.shape[0]).to(x.device)
    if world > 1:
        dist.broadcast(idx_shuffle, src=0)
    idx_unshuffle = torch.argsort(idx_shuffle)
    idx_this = idx_shuffle.view(world, -1)[rank]
    return gathered[idx_this], idx_unshuffle


@torch.no_grad()
def batch_unshuffle(x: torch.Tensor, idx_unshuffle: torch.Tensor, rank: int = 0, world: int = 1) -> torch.Tensor:
    """Undo :func:`batch_shuffle`: this rank's own rows, in their original order."""
    gathered = concat_all_gather(x, world)
    return gathered[idx_unshuffle.view(world, -1)[rank]]


# --------------------------------------------------------------------------------------------
# the method
# --------------------------------------------------------------------------------------------
class UniMoCo(TrainingMethod):
    """UniMoCo training method: query encoder ``backbone`` + projection, momentum key encoder, queues.

    ``forward(images, labels)``: images (N, 2, 3, H, W) float, the two views of each image
    (query, key); labels (N,) int64, -1 for an unlabelled image. Returns {"loss", "logs"}.
    Buffers: ``queue`` (dim, K) unit columns, ``label_queue`` (K,) int64 (-1 = empty or
    unlabelled), ``queue_ptr`` (1,) int64; they are saved with the checkpoints.
    """

    def __init__(
        self,
        backbone: nn.Module,
        embedding_size: int = 512,
        dim: int = 128,
        K: int = 65536,
        m: float = 0.999,
        T: float = 0.07,
        mlp: Any = None,
        margin: float = 0.0,
        own_key_positive: bool = False,
        num_classes: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ):
        super().__init__()
        self.rank, self.world_size = int(rank), int(world_size)
        if K <= 0 or dim <= 0:
            raise ValueError(f"moco_k={K} and moco_dim={dim} must be positive")
        if not 0.0 <= m <= 1.0:
            raise ValueError(f"moco_m={m} must be in [0, 1]")
        if T <= 0:
            raise ValueError(f"moco_t={T} must be positive")
        self.K, self.m, self.T = int(K), float(m), float(T)
        self.own_key_positive = bool(own_key_positive)
        self.num_classes = int(num_classes)
        self.backbone = backbone
        self.projection_q = make_projection(embedding_size, dim, mlp)
        # the key encoder starts as a copy of the query's parameters and follows them by momentum
        self.encoder_k = copy.deepcopy(backbone)
        self.projection_k = copy.deepcopy(self.projection_q)
        for param in self._key_params():
            param.requires_grad = False
        self.criterion = UnifiedContrastive(margin)
        self.register_buffer("queue", F.normalize(torch.randn(dim, self.K), dim=0))
        self.register_buffer("label_queue", torch.full((self.K,), -1, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))
        self._queue_synced = False

    @classmethod
    def train_data(cls, cfg: Any, env: DistEnv) -> tuple[Dataset, DistributedClassGroupSampler]:
        """Two augmented views per image, in FaceCL's class-group batches for this rank."""
        dataset = two_view_train_set(cfg.rec, cfg.num_classes or None, cfg.augmentation, seed=cfg.seed)
        batches = DistributedClassGroupSampler(
            dataset.labels, cfg.batch_size, cfg.samples_per_label, env.world_size, env.rank, seed=cfg.seed
        )
        return dataset, batches

    def _query_params(self) -> list[nn.Parameter]:
        return [*self.backbone.parameters(), *self.projection_q.parameters()]

    def _key_params(self) -> list[nn.Parameter]:
        return [*self.encoder_k.parameters(), *self.projection_k.parameters()]

    @torch.no_grad()
    def backbone_loaded(self) -> None:
        """``init_weights`` loaded the query encoder: the key encoder starts from it again."""
        self.encoder_k.load_state_dict(self.backbone.state_dict())

    @torch.no_grad()
    def momentum_update(self) -> None:
        """theta_k <- m * theta_k + (1 - m) * theta_q for every key parameter (not BN buffers)."""
        keys, queries = self._key_params(), self._query_params()
        torch._foreach_mul_(keys, self.m)
        torch._foreach_add_(keys, queries, alpha=1.0 - self.m)

    @torch.no_grad()
    def sync_queue(self) -> None:
        """Give every rank rank 0's queues (each rank drew its own randn at construction)."""
        if self.world_size > 1:
            for buf in (self.queue, self.label_queue, self.queue_ptr):
                dist.broadcast(buf, src=0)
        self._queue_synced = True

    @torch.no_grad()
    def keys(self, im_k: torch.Tensor) -> torch.Tensor:
        """Unit key features (N, dim) fp32 of this rank's key views, batch-shuffled for BN."""
        shuffled, idx_unshuffle = batch_shuffle(im_k, self.rank, self.world_size)
        k = F.normalize(self.projection_k(self.encoder_k(shuffled)).float(), dim=1)
        return batch_unshuffle(k, idx_unshuffle, self.rank, self.world_size)

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor, labels: torch.Tensor) -> None:
        """Write all ranks' keys and labels (rank order) at ``queue_ptr``; advance it mod K."""
        keys, labels = concat_all_gather(keys, self.world_size), concat_all_gather(labels, self.world_size)
        n = keys.shape[0]
        if self.K % n:
            raise ValueError(f"moco_k={self.K} is not a multiple of the global batch {n}")
        # a device-side pointer (index_copy_ with an arange) avoids a host sync every step
        columns = self.queue_ptr + torch.arange(n, device=self.queue_ptr.device)
        self.queue.index_copy_(1, columns, keys.T.to(self.queue.dtype))
        self.label_queue.index_copy_(0, columns, labels.to(self.label_queue.dtype))
        self.queue_ptr.add_(n).remainder_(self.K)

    def logits_and_targets(
        self, q: torch.Tensor, k: torch.Tensor, labels: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """fp32 logits (N, K [+1]) against the queue and their 0/1 targets; enqueues (k, labels)."""
        with torch.autocast(q.device.type, enabled=False):
            q = q.float()
            if not self.own_key_positive:
                self.enqueue(k, labels)  # FaceCL: before the logits, so the own key is a positive
            logits = q @ self.queue.clone() / self.T
            targets = (labels[:, None] == self.label_queue[None, :]) & (labels[:, None] != -1)
            if self.own_key_positive:
                own = (q * k).sum(1, keepdim=True) / self.T
                logits = torch.cat([own, logits], dim=1)
                targets = torch.cat([torch.ones_like(targets[:, :1]), targets], dim=1)
                self.enqueue(k, labels)
        return logits, targets.float()

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
        if images.dim() != 5 or images.shape[1] != 2:
            raise ValueError(f"UniMoCo expects (N, 2, C, H, W) image pairs, got {tuple(images.shape)}")
        if not self._queue_synced:
            self.sync_queue()
        q = F.normalize(self.projection_q(self.backbone(images[:, 0])).float(), dim=1)
        with torch.no_grad():
            self.momentum_update()  # before the keys, as FaceCL
            k = self.keys(images[:, 1])
        logits, targets = self.logits_and_targets(q, k, labels)
        loss = self.criterion(logits, targets)
        positives = targets.sum(1).mean()
        return {"loss": loss, "logs": {"AvgPos": positives.detach()}}  # the trainer logs the loss

    @torch.no_grad()
    def queue_stats(self) -> dict[str, torch.Tensor]:
        """FaceCL's queue statistics as device scalars: labelled items, and per-class counts.

        #items, the fraction of the queue labelled; with ``num_classes`` also the number of
        classes absent from the queue, the mean/std/min/max count per class, and FaceCL's
        balance score log(C) / CE(uniform || class frequencies), 1 for a perfectly even queue.
        Only device ops without a host sync (no boolean indexing, no bincount): the trainer
        calls this every step and reads the values every ``frequent`` steps.
        """
        labelled = self.label_queue >= 0
        items = labelled.sum().float()
        stats = {"Q_items": items, "Q_labelled": items / self.K}
        if self.num_classes > 0:
            # slot 0 collects the unlabelled (-1) entries
            counts = torch.zeros(self.num_classes + 1, device=self.label_queue.device)
            counts.index_add_(0, self.label_queue + 1, torch.ones_like(self.label_queue, dtype=counts.dtype))
            counts = counts[1:]
            std, mean = torch.std_mean(counts)
            probs = counts / items.clamp_min(1)
            cross_entropy = -torch.log(probs + 1e-20).mean()
            stats.update(
                Q_zeros=(counts == 0).sum().float(), Q_mean=mean, Q_std=std,
                Q_min=counts.min(), Q_max=counts.max(), Q_balance=math.log(self.num_classes) / cross_entropy,
            )
        return stats

    def extra_state(self) -> dict[str, torch.Tensor]:
        """Scalars to log beside the losses: the queue statistics (read every ``frequent`` steps)."""
        return self.queue_stats()

    @classmethod
    def from_config(cls, cfg: Any, backbone: nn.Module, env: DistEnv) -> "UniMoCo":
        """UniMoCo from a config (the UniMoCo section of config/config.py), for the process group ``env``."""
        world = env.world_size
        global_batch = cfg.batch_size * world
        if cfg.moco_k % global_batch:
            raise ConfigError(
                f"moco_k {cfg.moco_k} is not a multiple of the global batch {global_batch} "
                f"(batch_size {cfg.batch_size} x {world} processes): the queue would be overwritten unevenly"
            )
        # FaceCL builds its encoders without dropout; `dropout` is ContraFace's stage-1 setting
        backbone.dropout_p = 0.0
        return cls(
            backbone,
            embedding_size=cfg.embedding_size,
            dim=cfg.moco_dim,
            K=cfg.moco_k,
            m=cfg.moco_m,
            T=cfg.moco_t,
            mlp=cfg.moco_mlp,
            margin=cfg.unimoco_margin,
            own_key_positive=cfg.own_key_positive,
            num_classes=cfg.num_classes,
            rank=env.rank,
            world_size=world,
        )

    @classmethod
    def check_config(cls, cfg: Any) -> None:
        """FaceCL's keys (the queue against the global batch is checked in ``from_config``)."""
        check_unimoco_config(cfg)


UNIMOCO_KEYS = (
    "moco_dim", "moco_k", "moco_m", "moco_t", "moco_mlp", "unimoco_margin", "own_key_positive",
    "samples_per_label", "augmentation",
)


def check_unimoco_config(cfg: Any) -> None:
    """The UniMoCo (FaceCL) keys; K against the global batch is checked where the world size is known."""
    if cfg.get("dali"):
        raise ConfigError(
            "dali = True: FaceCL's DALI loader is not offered (it gave one view and no class groups, "
            "so UniMoCo never trained with it); set dali = False"
        )
    if isinstance(cfg.get("moco_mlp"), bool):
        raise ConfigError(
            f"moco_mlp = {cfg.moco_mlp}: use None (one linear layer), 'same_in', 'same_out' or a hidden width"
        )
    if cfg.method != "unimoco":
        return
    missing = [key for key in UNIMOCO_KEYS if key not in cfg]
    if missing:
        raise ConfigError(f"method 'unimoco' needs the keys {', '.join(missing)} (see config/config.py, UniMoCo)")
    mlp = cfg.moco_mlp
    if not (mlp in (None, "same_in", "same_out") or (isinstance(mlp, int) and mlp > 0)):
        raise ConfigError(f"moco_mlp {mlp!r}: use None, 'same_in', 'same_out' or a positive hidden width")
    if cfg.augmentation not in AUGMENTATIONS:
        raise ConfigError(f"augmentation {cfg.augmentation!r} is not one of {', '.join(AUGMENTATIONS)}")
    for key in ("moco_dim", "moco_k", "samples_per_label"):
        if not isinstance(cfg[key], int) or cfg[key] <= 0:
            raise ConfigError(f"{key} must be a positive integer, got {cfg[key]!r}")
    if cfg.batch_size % cfg.samples_per_label:
        raise ConfigError(
            f"batch_size {cfg.batch_size} is not a multiple of samples_per_label {cfg.samples_per_label}: "
            "a UniMoCo batch holds whole groups of one class"
        )
    if not 0.0 <= cfg.moco_m <= 1.0:
        raise ConfigError(f"moco_m must be in [0, 1], got {cfg.moco_m!r}")
    if not cfg.moco_t > 0:
        raise ConfigError(f"moco_t must be positive, got {cfg.moco_t!r}")
