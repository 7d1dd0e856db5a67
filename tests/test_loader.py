"""utils/loader.py: normalize_batch, collate_faces, DataLoaderX (order, workers, errors, prefetch thread)."""

from __future__ import annotations

import math
import shutil
import traceback

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler

from test_dataset import FIXTURES, write_rec
from utils.dataset import MXFaceDataset, get_train_dataset
from utils.loader import DataLoaderX, collate_faces, normalize_batch
from utils.recordio import RecordIOError


# ------------------------------------------------------------------------------------------
# normalize_batch
# ------------------------------------------------------------------------------------------
def test_normalize_batch_is_insightfaces_float32_sequence():
    pixels = np.arange(256, dtype=np.uint8)
    expected = ((pixels.astype(np.float32) / np.float32(255)) - np.float32(0.5)) / np.float32(0.5)
    for shape in ((256,), (2, 2, 64), (1, 1, 4, 8, 8)):
        x = torch.from_numpy(pixels.reshape(shape))
        y = normalize_batch(x)
        assert y.dtype == torch.float32 and y.shape == x.shape
        assert torch.equal(y, torch.from_numpy(expected.reshape(shape)))
    assert float(normalize_batch(torch.tensor([0, 51, 255], dtype=torch.uint8))[1]) == pytest.approx(-0.6)
    floats = torch.zeros(3)
    assert normalize_batch(floats) is floats  # already normalised
    with pytest.raises(TypeError, match="expected uint8 images, got torch.int32"):
        normalize_batch(torch.zeros(3, dtype=torch.int32))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_normalize_batch_on_cuda_equals_the_cpu():
    x = torch.arange(256, dtype=torch.uint8).reshape(4, 64)
    assert torch.equal(normalize_batch(x.cuda()).cpu(), normalize_batch(x))


# ------------------------------------------------------------------------------------------
# DataLoaderX
# ------------------------------------------------------------------------------------------
def direct(ds, indices) -> tuple[torch.Tensor, torch.Tensor]:
    items = [ds[i] for i in indices]
    return torch.stack([x for x, _ in items]), torch.stack([y for _, y in items])


def collect(loader) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(x.clone(), y.clone()) for x, y in loader]


@pytest.fixture
def rec_ds(tmp_path):
    write_rec(tmp_path, [float(i % 3) for i in range(10)])
    return MXFaceDataset(tmp_path, seed=5)


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("background", [False, True])
def test_loader_matches_dataset(rec_ds, num_workers, background):
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=4, num_workers=num_workers, background=background)
    assert len(loader) == 3
    for epoch in (0, 1):
        rec_ds.set_epoch(epoch)
        batches = collect(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        expected = [direct(rec_ds, range(s, min(s + 4, 10))) for s in (0, 4, 8)]
        for (x, y), (ex, ey) in zip(batches, expected):
            assert torch.equal(x, ex) and torch.equal(y, ey)
    assert not background or loader._producer is not None


@pytest.mark.parametrize("num_workers", [0, 2])
def test_collate_faces_batches_channels_last_and_normalises_to_nchw(rec_ds, num_workers):
    rec_ds.set_epoch(1)
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=4, num_workers=num_workers)
    x, y = next(iter(loader))
    ex, ey = direct(rec_ds, range(4))  # torch.stack of the items: a contiguous NCHW copy
    assert x.shape == (4, 3, 112, 112) and x.dtype == torch.uint8 and torch.equal(x, ex) and torch.equal(y, ey)
    assert x.is_contiguous(memory_format=torch.channels_last)  # one HWC copy per image, no CHW pass
    z = normalize_batch(x)
    assert z.is_contiguous() and torch.equal(z, normalize_batch(ex))
    # a user's default_collate still gets a list of samples from the batched read
    dx, dy = torch.utils.data.default_collate(rec_ds.__getitems__([0, 1, 2, 3]))
    assert torch.equal(dx, ex) and torch.equal(dy, ey)
    # anything else is batched as default_collate does
    assert torch.equal(collate_faces([(torch.zeros(3, 2, 2), 1)] * 2)[0], torch.zeros(2, 3, 2, 2))


def test_persistent_workers_see_set_epoch(rec_ds):
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=5, num_workers=2, persistent_workers=True,
                         background=True)
    seen = []
    for epoch in (0, 1, 2):
        rec_ds.set_epoch(epoch)  # the workers started in epoch 0 read it from shared memory
        x = torch.cat([b[0] for b in collect(loader)])
        assert torch.equal(x, direct(rec_ds, range(10))[0])  # computed with the same epoch
        seen.append(x)
    assert not torch.equal(seen[0], seen[1]) and not torch.equal(seen[1], seen[2])


def test_loader_with_distributed_sampler_covers_the_data(rec_ds):
    got = []
    for rank in (0, 1):
        sampler = DistributedSampler(rec_ds, num_replicas=2, rank=rank, shuffle=True, seed=4)
        loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=2, sampler=sampler, num_workers=2,
                             background=True)
        sampler.set_epoch(1)
        rec_ds.set_epoch(1)
        indices = list(sampler)
        assert len(loader) == math.ceil(len(indices) / 2) == 3
        x = torch.cat([b[0] for b in collect(loader)])
        assert torch.equal(x, direct(rec_ds, indices)[0])
        got += indices
    assert sorted(got) == list(range(10))


def test_loader_with_batch_sampler(rec_ds):
    class EvenOdd:
        def __iter__(self):
            yield [0, 2, 4]
            yield [9, 7]

        def __len__(self):
            return 2

    loader = DataLoaderX("cpu", dataset=rec_ds, batch_sampler=EvenOdd(), num_workers=2, background=True)
    assert len(loader) == 2
    batches = collect(loader)
    assert [b[1].tolist() for b in batches] == [[0, 2, 1], [0, 1]]
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_sampler=BatchSampler(SequentialSampler(rec_ds), 6, True))
    assert len(loader) == 1 and collect(loader)[0][1].tolist() == [0, 1, 2, 0, 1, 2]


@pytest.mark.parametrize("num_workers", [0, 2])
@pytest.mark.parametrize("background", [False, True])
def test_loader_propagates_worker_errors(tmp_path, num_workers, background):
    write_rec(tmp_path, [0.0] * 6, header=False)
    rec = tmp_path / "train.rec"
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "train.idx").read_text().splitlines()]
    rec.write_bytes(rec.read_bytes()[: offsets[5] + 40])
    ds = MXFaceDataset(tmp_path, num_classes=1, label_check="lazy")
    loader = DataLoaderX("cpu", dataset=ds, batch_size=2, num_workers=num_workers, background=background)
    got = []
    with pytest.raises(RecordIOError, match=r"is truncated.*\[key 5, dataset index 5\]") as excinfo:
        for _, y in loader:
            got.append(len(y))
    assert got == [2, 2]  # the batches before the bad one arrive first
    # torch's re-raise leaves a reference cycle (exception -> frame -> exception) that holds the
    # worker iterator; freed by the cycle collector later, its shutdown stalls 5 s per worker.
    # Clearing the frames frees it now.
    traceback.clear_frames(excinfo.tb)


def test_loader_stops_cleanly_after_break(rec_ds):
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=2, num_workers=2, persistent_workers=True,
                         background=True)
    for _ in range(3):
        for i, _batch in enumerate(loader):
            if i == 1:
                break
        # the next epoch starts from the first batch again
        assert torch.equal(next(iter(loader))[1], direct(rec_ds, [0, 1])[1])
    thread, _ = loader._producer
    del _batch
    assert len(collect(loader)) == 5 and not thread.is_alive()


def test_loader_device_argument():
    loader = DataLoaderX(torch.device("cpu"), dataset=list(range(5)), batch_size=2)
    assert loader.device == torch.device("cpu") and not loader.background
    assert [b.tolist() for b in loader] == [[0, 1], [2, 3], [4]]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            DataLoaderX(0, dataset=list(range(5)))
    with pytest.raises(ValueError, match="prefetch=0"):
        DataLoaderX("cpu", dataset=list(range(5)), prefetch=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_loader_cuda_copies_on_side_stream(rec_ds):
    loader = DataLoaderX(0, dataset=rec_ds, batch_size=4, num_workers=2)
    assert loader.pin_memory and loader.background
    rec_ds.set_epoch(0)
    batches = [(x.cpu(), y.cpu(), x.device) for x, y in loader]
    assert all(d.type == "cuda" for _, _, d in batches)
    for (x, y, _), s in zip(batches, (0, 4, 8)):
        ex, ey = direct(rec_ds, range(s, min(s + 4, 10)))
        assert torch.equal(x, ex) and torch.equal(y, ey)


def test_fixture_copy_through_loader(tmp_path):
    shutil.copytree(FIXTURES, tmp_path / "fx")
    ds = get_train_dataset(tmp_path / "fx", seed=0)
    ds.set_epoch(0)
    labels = torch.cat([y for _, y in DataLoaderX("cpu", dataset=ds, batch_size=8, num_workers=2)])
    assert labels.tolist() == ds.labels.tolist() == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5


def test_workers_start_after_the_parent_used_opencvs_thread_pool(rec_ds):
    # an inherited pool used to deadlock the forked worker's cv2.setNumThreads(1)
    big = np.zeros((2000, 2000, 3), np.uint8)
    cv2.warpAffine(big, np.eye(2, 3), (1000, 1000))  # runs on OpenCV's pool
    threads = cv2.getNumThreads()
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=4, num_workers=2)
    assert len(list(loader)) == len(loader)
    assert cv2.getNumThreads() == threads
