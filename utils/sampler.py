"""A DistributedSampler that can start part-way into an epoch (for exact resume)."""

from __future__ import annotations

from typing import Iterator

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
