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
