"""Samplers that can start part-way into an epoch (for exact resume): per-sample and FaceCL's class groups."""

from __future__ import annotations

import math
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableDistributedSampler(DistributedSampler):
    """DistributedSampler (same order for the same seed and epoch) that can skip a prefix.

    ``set_epoch(epoch, start=k)`` makes the next pass begin at the k-th sample of this rank's
    share of the epoch, so a run resumed mid-epoch sees exactly the remaining samples in the
    order the uninterrupted run would have.
    """

    def __init__(self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, seed: int = 0,
                 shuffle: bool = True, drop_last: bool = True):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's permutation and the number of samples of it to skip."""
        super().set_epoch(epoch)
        if not 0 <= start <= self.num_samples:
            raise ValueError(f"start {start} is outside this rank's epoch of {self.num_samples} samples")
        self.start = start

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.start :])

    def __len__(self) -> int:
        return self.num_samples - self.start


class ResumableBatchSampler:
    """Consecutive batches of a :class:`ResumableDistributedSampler`, resumable by batch.

    ``set_epoch(epoch, start=k)`` skips this rank's first ``k`` batches of the epoch; incomplete
    last batches are dropped (every rank runs the same number of steps).
    """

    def __init__(self, sampler: ResumableDistributedSampler, batch_size: int):
        self.sampler = sampler
        self.batch_size = batch_size
        self.batches_per_epoch = sampler.num_samples // batch_size

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch and the number of its batches already done."""
        self.sampler.set_epoch(epoch, start=start * self.batch_size)

    def __iter__(self) -> Iterator[list[int]]:
        indices = list(self.sampler)
        for i in range(len(self)):
            yield indices[i * self.batch_size : (i + 1) * self.batch_size]

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size


class DistributedClassGroupSampler:
    """FaceCL's batch sampler: batches of whole groups of ``samples_per_label`` images of one class.

    Per epoch a ``torch.Generator`` seeded ``seed + epoch`` draws, in FaceCL's order: for each
    class (in order of first appearance in ``labels``) a permutation of its images, padded to a
    multiple of the group size with random repeats of its own images; then a permutation of all
    groups, padded to a multiple of ``num_replicas`` with random repeats. Rank r takes groups
    r, r + W, ...; its batches are consecutive chunks of ``batch_size`` indices. So every rank
    sees the same batches as FaceCL's sampler for the same labels, seed and epoch.

    ``set_epoch(epoch, start=k)`` skips this rank's first ``k`` batches (exact mid-epoch
    resume); ``len()`` is the number of batches the next pass yields (batches per epoch at k=0).
    """

    def __init__(
        self,
        labels: Sequence[int] | np.ndarray | torch.Tensor,
        batch_size: int,
        samples_per_label: int,
        num_replicas: int = 1,
        rank: int = 0,
        seed: int = 0,
        drop_last: bool = True,
    ):
        if samples_per_label <= 0 or batch_size <= 0:
            raise ValueError(f"batch_size {batch_size} and samples_per_label {samples_per_label} must be positive")
        if batch_size % samples_per_label:
            raise ValueError(
                f"batch_size {batch_size} is not a multiple of samples_per_label {samples_per_label}: "
                "a batch must hold whole groups of one class"
            )
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        labels = np.asarray(labels, dtype=np.int64).reshape(-1)
        if labels.size == 0:
            raise ValueError("DistributedClassGroupSampler: no labels")
        self.batch_size, self.group_size = int(batch_size), int(samples_per_label)
        self.num_replicas, self.rank = int(num_replicas), int(rank)
        self.seed, self.drop_last = int(seed), bool(drop_last)
        self.epoch, self.start = 0, 0
        # the classes in order of first appearance (FaceCL's defaultdict order): a stable sort
        # groups each class's indices in index order, np.unique gives each class's first index
        order = np.argsort(labels, kind="stable")
        classes, first, counts = np.unique(labels, return_index=True, return_counts=True)
        bounds = np.concatenate([[0], np.cumsum(counts)])
        ids = [torch.from_numpy(order[bounds[c] : bounds[c + 1]]) for c in range(len(classes))]
        self.class_ids = [ids[c] for c in np.argsort(first, kind="stable")]
        total = sum(math.ceil(len(i) / self.group_size) for i in self.class_ids)
        per_replica_groups = math.ceil(total / self.num_replicas)
        self.total_groups = per_replica_groups * self.num_replicas
        self.samples_per_replica = per_replica_groups * self.group_size
        self.batches_per_epoch = (
            self.samples_per_replica // self.batch_size
            if self.drop_last
            else math.ceil(self.samples_per_replica / self.batch_size)
        )

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """Select the epoch's order and the number of this rank's batches of it to skip."""
        if not 0 <= start <= self.batches_per_epoch:
            raise ValueError(f"start {start} is outside this rank's epoch of {self.batches_per_epoch} batches")
        self.epoch, self.start = int(epoch), int(start)

    def indices(self) -> torch.Tensor:
        """This rank's sample indices of the epoch, group after group (FaceCL's RNG call order)."""
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)
        groups = []
        for ids in self.class_ids:
            perm = torch.randperm(len(ids), generator=g)
            extra = -len(ids) % self.group_size
            if extra:
                perm = torch.cat((perm, torch.randint(high=len(ids), size=(extra,), generator=g)))
            groups.append(ids[perm].reshape(-1, self.group_size))
        grouped = torch.vstack(groups)
        perm = torch.randperm(grouped.shape[0], generator=g)
        extra = -grouped.shape[0] % self.num_replicas
        if extra:
            perm = torch.cat((perm, torch.randint(high=grouped.shape[0], size=(extra,), generator=g)))
        grouped = grouped[perm]
        return grouped[self.rank :: self.num_replicas].flatten()

    def __iter__(self) -> Iterator[list[int]]:
        flat = self.indices().tolist()
        for b in range(self.start, self.batches_per_epoch):
            yield flat[b * self.batch_size : (b + 1) * self.batch_size]

    def __len__(self) -> int:
        return self.batches_per_epoch - self.start


def read_labels_txt(path: str, keys: Sequence[int] | np.ndarray) -> np.ndarray:
    """Labels of the dataset's images from FaceCL's ``labels.txt`` ("<record key>\\t<label>" lines).

    ``keys`` are the dataset's record keys in dataset order; every one must be listed.
    """
    by_key: dict[int, int] = {}
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.split()
            try:
                key, label = int(parts[0]), int(float(parts[1]))
            except (ValueError, IndexError):
                raise ValueError(
                    f"{path}:{lineno}: expected '<record key>\\t<label>', found {line.strip()!r}"
                ) from None
            by_key[key] = label
    missing = [int(k) for k in keys if int(k) not in by_key]
    if missing:
        raise ValueError(
            f"{path}: no label for {len(missing)} of the {len(keys)} records (first: key {missing[0]}); "
            "delete the file to read the labels from train.rec"
        )
    return np.fromiter((by_key[int(k)] for k in keys), np.int64, len(keys))
