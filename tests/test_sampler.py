"""utils/sampler.py: DistributedClassGroupSampler (FaceCL's batches, resumable) and labels.txt."""

from collections import Counter

import numpy as np
import pytest

from utils.sampler import (
    DistributedClassGroupSampler,
    ResumableBatchSampler,
    ResumableDistributedSampler,
    read_labels_txt,
)


def test_facecl_example_order():
    # FaceCL's sampler on labels [0,0,0,1,1,2], batch 2, group 2, 2 ranks, epoch 0, seed 0 (its output,
    # recorded once)
    rank0 = DistributedClassGroupSampler([0, 0, 0, 1, 1, 2], 2, 2, num_replicas=2, rank=0, seed=0)
    rank1 = DistributedClassGroupSampler([0, 0, 0, 1, 1, 2], 2, 2, num_replicas=2, rank=1, seed=0)
    assert list(rank0) == [[5, 5], [2, 0]]
    assert list(rank1) == [[3, 4], [1, 2]]
    assert len(rank0) == len(rank1) == 2


def test_facecl_order_for_other_seeds_and_epochs():
    # FaceCL's sampler on labels [2,0,1,0,2,2,1,0,3], batch 4, group 2, 3 ranks (its output,
    # recorded once): classes are taken in order of first appearance (2, 0, 1, 3)
    labels = [2, 0, 1, 0, 2, 2, 1, 0, 3]
    expected = {
        (0, 0): [[[4, 5, 8, 8]], [[6, 2, 5, 0]], [[3, 1, 1, 7]]],
        (3, 2): [[[5, 4, 7, 3]], [[8, 8, 1, 3]], [[0, 4, 2, 6]]],
    }
    for (seed, epoch), per_rank in expected.items():
        for rank in range(3):
            sampler = DistributedClassGroupSampler(labels, 4, 2, num_replicas=3, rank=rank, seed=seed)
            sampler.set_epoch(epoch)
            assert list(sampler) == per_rank[rank], (seed, epoch, rank)


def test_batches_are_whole_groups_of_one_class_and_cover_every_image():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 20, size=301)
    world, batch, group = 3, 6, 3
    samplers = [DistributedClassGroupSampler(labels, batch, group, world, r, seed=7) for r in range(world)]
    seen = Counter()
    for sampler in samplers:
        sampler.set_epoch(4)
        batches = list(sampler)
        assert len(batches) == len(sampler) == samplers[0].batches_per_epoch  # every rank the same steps
        for b in batches:
            assert len(b) == batch
            for g in range(0, batch, group):
                assert len({int(labels[i]) for i in b[g : g + group]}) == 1
            seen.update(b)
    # padding repeats images, drop_last drops at most one batch per rank: nearly every image is seen
    assert len(seen) >= len(labels) - world * batch
    # groups: sum over classes of ceil(n / group), padded to a multiple of the world size
    groups = sum(-(-int(n) // group) for n in np.bincount(labels))
    assert samplers[0].total_groups == -(-groups // world) * world
    assert samplers[0].batches_per_epoch == samplers[0].total_groups // world * group // batch


def test_epochs_differ_and_repeat():
    labels = np.repeat(np.arange(10), 4)
    sampler = DistributedClassGroupSampler(labels, 4, 2, seed=1)
    sampler.set_epoch(0)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


def test_resume_skips_batches():
    labels = np.repeat(np.arange(12), 3)
    sampler = DistributedClassGroupSampler(labels, 4, 2, num_replicas=2, rank=1, seed=5)
    sampler.set_epoch(3)
    full = list(sampler)
    sampler.set_epoch(3, start=2)
    assert len(sampler) == len(full) - 2
    assert list(sampler) == full[2:]
    with pytest.raises(ValueError, match="outside this rank's epoch"):
        sampler.set_epoch(3, start=len(full) + 1)


def test_drop_last_false_keeps_the_short_batch():
    sampler = DistributedClassGroupSampler([0, 0, 1, 1, 2, 2], 4, 2, drop_last=False)
    batches = list(sampler)
    assert [len(b) for b in batches] == [4, 2] and len(sampler) == 2


def test_bad_arguments():
    with pytest.raises(ValueError, match="batch_size 6 is not a multiple of samples_per_label 4"):
        DistributedClassGroupSampler([0, 1], 6, 4)
    with pytest.raises(ValueError, match="rank 2 is outside"):
        DistributedClassGroupSampler([0, 1], 2, 2, num_replicas=2, rank=2)


def test_read_labels_txt(tmp_path):
    path = tmp_path / "labels.txt"
    path.write_text("1\t4\n2\t4\n3\t7\n\n")
    assert read_labels_txt(str(path), [3, 1, 2]).tolist() == [7, 4, 4]
    with pytest.raises(ValueError, match="no label for 1 of the 4 records \\(first: key 9\\)"):
        read_labels_txt(str(path), [1, 2, 3, 9])
    path.write_text("1 x\n")
    with pytest.raises(ValueError, match="labels.txt:1: expected"):
        read_labels_txt(str(path), [1])


def test_resumable_batch_sampler_unchanged():
    class Data:
        def __len__(self):
            return 20

    batches = ResumableBatchSampler(ResumableDistributedSampler(Data(), 2, 0, seed=0), 3)
    batches.set_epoch(1)
    full = list(batches)
    batches.set_epoch(1, start=1)
    assert list(batches) == full[1:]
