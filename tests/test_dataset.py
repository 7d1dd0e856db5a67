"""utils/dataset.py: MXFaceDataset, ImageFolderDataset, get_train_dataset, DataLoaderX."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import pickle
import shutil
import traceback
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler, SequentialSampler

import utils.dataset as dataset_mod
from utils.dataset import (
    DataLoaderX,
    DatasetError,
    ImageFolderDataset,
    MXFaceDataset,
    flip_decision,
    get_train_dataset,
    normalize_batch,
)
from utils.recordio import IRHeader, MXIndexedRecordIO, RecordIOError, pack, unpack

FIXTURES = Path(__file__).resolve().parent / "data" / "mxnet"  # written by mxnet 1.9.1, see data/README.md


def png(bgr: np.ndarray) -> bytes:
    return cv2.imencode(".png", bgr)[1].tobytes()


def make_image(i: int, size: int = 112) -> np.ndarray:
    """A BGR image that is not left-right symmetric, different for each i."""
    rng = np.random.default_rng(i)
    return cv2.resize(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8), (size, size),
                      interpolation=cv2.INTER_NEAREST)


def expected_tensor(bgr: np.ndarray, flip: bool = False) -> np.ndarray:
    """The uint8 CHW RGB image a dataset hands out."""
    rgb = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
    if flip:
        rgb = rgb[:, ::-1]
    return np.ascontiguousarray(rgb.transpose(2, 0, 1))


def arcface_torch_tensor(bgr: np.ndarray, flip: bool = False) -> np.ndarray:
    """What the float32 path gave before (and arcface_torch's ToTensor + Normalize(0.5, 0.5) gives)."""
    chw = expected_tensor(bgr, flip).astype(np.float32)
    chw /= np.float32(255.0)
    chw -= np.float32(0.5)
    chw /= np.float32(0.5)
    return chw


def write_rec(root: Path, labels: list, header: bool = True, property_: str | None = None,
              images: list[np.ndarray] | None = None, classes: int | None = None) -> list[np.ndarray]:
    """A tiny train.rec/.idx with lossless PNG images; insightface layout when ``header``."""
    root.mkdir(parents=True, exist_ok=True)
    images = images or [make_image(i) for i in range(len(labels))]
    w = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "w")
    n = len(labels)
    first = 1 if header else 0
    c = classes if classes is not None else 1 + max(int(np.ravel(lab)[0]) for lab in labels)
    if header:
        w.write_idx(0, pack(IRHeader(0, [n + 1, n + 1 + c], 0, 0), b""))
    for i, (lab, img) in enumerate(zip(labels, images)):
        w.write_idx(i + first, pack(IRHeader(0, lab, i + first, 0), png(img)))
    if header:
        for cls in range(c):
            keys = [i + 1 for i, lab in enumerate(labels) if int(np.ravel(lab)[0]) == cls] or [0]
            w.write_idx(n + 1 + cls, pack(IRHeader(0, [min(keys), max(keys) + 1], n + 1 + cls, 0), b""))
    w.close()
    if property_ is not None:
        (root / "property").write_text(property_)
    return images


LABELS = [0.0, 0.0, [1.0, 1.0], 1.0, 2.0, [2.0, 7.0], 2.0]  # scalar and array labels


# ------------------------------------------------------------------------------------------
# MXFaceDataset
# ------------------------------------------------------------------------------------------
def test_fixture_dataset():
    ds = MXFaceDataset(FIXTURES, augment=False)
    expected = json.loads((FIXTURES / "expected.json").read_text())["records"][1:21]
    assert len(ds) == 20 and ds.num_classes == 4 and ds.header0 == (21, 25)
    labels = [int(np.ravel(e["label"])[0]) for e in expected]
    assert labels == [0] * 5 + [1] * 5 + [2] * 5 + [3] * 5
    assert ds.labels.dtype == np.int64 and ds.labels.tolist() == labels
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    for i in (0, 4, 19):  # 0 and 4 have array labels
        x, y = ds[i]
        assert x.shape == (3, 112, 112) and x.dtype == torch.uint8
        assert y.dtype == torch.int64 and y.shape == () and int(y) == labels[i]
        payload = unpack(r.read_idx(i + 1))[1]
        assert hashlib.sha256(payload).hexdigest() == expected[i]["payload_sha256"]
        bgr = cv2.imdecode(np.frombuffer(payload, np.uint8), cv2.IMREAD_COLOR)
        np.testing.assert_array_equal(x.numpy(), expected_tensor(bgr))
        # normalised on the device, the numbers are the old float32 ones, bit for bit
        assert torch.equal(normalize_batch(x), torch.from_numpy(arcface_torch_tensor(bgr)))


def test_tiny_rec_labels_pixels_and_rgb(tmp_path):
    images = write_rec(tmp_path, LABELS)
    ds = MXFaceDataset(tmp_path, augment=False)
    assert (len(ds), ds.num_classes) == (7, 3)
    assert ds.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    for i in range(7):
        x, y = ds[i]
        assert int(y) == ds.labels[i]
        np.testing.assert_array_equal(x.numpy(), expected_tensor(images[i]))


def test_memory_mapped_reads_equal_the_reader(tmp_path):
    write_rec(tmp_path, LABELS)
    ds = MXFaceDataset(tmp_path, augment=False)
    for key in ds.keys.tolist():
        header, payload = unpack(ds.record.read_idx(key))
        label, data = ds._read_mapped(key)
        assert label == (header.label if header.flag == 0 else header.label[0])
        assert data.tobytes() == payload
    ds2 = pickle.loads(pickle.dumps(ds))  # the map is not pickled; the copy maps the file again
    assert ds2._map is None and torch.equal(ds2[2][0], ds[2][0]) and ds2._map


def test_pure_red_is_channel_0(tmp_path):
    red = np.zeros((112, 112, 3), np.uint8)
    red[..., 2] = 255  # BGR
    write_rec(tmp_path, [0.0], images=[red])
    x, _ = MXFaceDataset(tmp_path, augment=False)[0]
    assert torch.all(x[0] == 255) and torch.all(x[1:] == 0)
    y = normalize_batch(x)
    assert torch.all(y[0] == 1.0) and torch.all(y[1:] == -1.0)


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


def test_plain_file_and_property(tmp_path):
    images = write_rec(tmp_path, [2.0, [0.0, 5.0], 1.0], header=False, property_="5,112,112")
    ds = MXFaceDataset(tmp_path, augment=False)
    # key 0 has flag 2 but its payload is an image: not a header
    assert ds.header0 is None and ds.keys.tolist() == [0, 1, 2]
    assert ds.num_classes == 5 and ds.labels.tolist() == [2, 0, 1]
    np.testing.assert_array_equal(ds[1][0].numpy(), expected_tensor(images[1]))


def test_num_classes_sources(tmp_path, caplog):
    write_rec(tmp_path / "a", [0.0, 3.0], header=False)
    assert MXFaceDataset(tmp_path / "a").num_classes == 4  # largest label + 1
    with pytest.raises(DatasetError, match="cannot tell the number of classes"):
        MXFaceDataset(tmp_path / "a", label_check="lazy")
    assert MXFaceDataset(tmp_path / "a", num_classes=10, label_check="lazy").num_classes == 10
    write_rec(tmp_path / "b", [0.0, 1.0], header=False, property_="3,112,112")
    with caplog.at_level(logging.WARNING):
        assert MXFaceDataset(tmp_path / "b", num_classes=2).num_classes == 2
    assert "property says 3 classes" in caplog.text
    (tmp_path / "b" / "property").write_text("three,112,112")
    with pytest.raises(DatasetError, match=r"b/property: expected 'num_classes,height,width'"):
        MXFaceDataset(tmp_path / "b")


def test_identity_records_checked_against_num_classes(tmp_path):
    write_rec(tmp_path, LABELS)
    with pytest.raises(DatasetError, match=r"train\.rec: 3 identity records \(keys 8\.\.10\) but num_classes = 5"):
        MXFaceDataset(tmp_path, num_classes=5, label_check="lazy")
    (tmp_path / "property").write_text("2,112,112")
    with pytest.raises(DatasetError, match=r"num_classes = 2 \(from .*property\)"):
        MXFaceDataset(tmp_path, label_check="lazy")


def test_label_out_of_range_up_front_when_scanned(tmp_path):
    write_rec(tmp_path, [0.0, 1.0, [7.0, 1.0], 1.0], header=False, property_="3,112,112")
    with pytest.raises(DatasetError, match=r"train\.rec: key 2 has label 7, outside \[0, 3\)"):
        MXFaceDataset(tmp_path, label_check="full")
    with pytest.raises(DatasetError, match="key 2 has label 7"):
        MXFaceDataset(tmp_path)  # auto: a small file is scanned


def test_label_out_of_range_lazily(tmp_path, monkeypatch):
    write_rec(tmp_path, [0.0, 1.0, -1.0, 1.0], header=False, property_="3,112,112")
    ds = MXFaceDataset(tmp_path, label_check="lazy")
    assert ds.labels is None
    assert int(ds[1][1]) == 1
    with pytest.raises(DatasetError, match=r"train\.rec: key 2 has label -1, outside \[0, 3\)"):
        ds[2]
    monkeypatch.setattr(dataset_mod, "SCAN_LIMIT_BYTES", 0)  # auto on a "large" file = lazy
    assert MXFaceDataset(tmp_path).labels is None


def test_non_integer_label(tmp_path):
    write_rec(tmp_path, [0.0, 1.5], header=False, property_="3,112,112")
    with pytest.raises(DatasetError, match="key 1: label 1.5 is not an integer class id"):
        MXFaceDataset(tmp_path)
    with pytest.raises(DatasetError, match="key 1: label 1.5 is not an integer"):
        MXFaceDataset(tmp_path, label_check="lazy")[1]


def test_label_scan_reads_split_headers(tmp_path):
    # id2 = magic: the writer splits the record inside the IRHeader; the scan must still find the label
    root = tmp_path
    w = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "w")
    w.write_idx(0, pack(IRHeader(0, 1.0, 0, 0xCED7230A), png(make_image(0))))
    w.write_idx(1, pack(IRHeader(0, [2.0, 1.0], 1, 0xCED7230A), png(make_image(1))))
    w.write_idx(2, pack(IRHeader(0, 0.0, 2, 0), png(make_image(2))))
    w.close()
    ds = MXFaceDataset(root)
    assert ds.labels.tolist() == [1, 2, 0]
    assert [int(ds[i][1]) for i in range(3)] == [1, 2, 0]


@pytest.mark.parametrize("offset, message", [
    (12, r"key 1: no record at byte 12 \(magic 0x00000000\).*tools\.rec2idx .*--force"),
    (13, r"key 1: byte 13 is not a record boundary"),
    (10**6, r"key 1: record at byte 1000000 is truncated or past the end of the file"),
])
def test_scan_detects_index_not_matching_rec(tmp_path, offset, message):
    write_rec(tmp_path, [0.0, 1.0, 1.0], header=False)
    idx = tmp_path / "train.idx"
    lines = idx.read_text().splitlines()
    lines[1] = f"1\t{offset}"  # inside record 0, unaligned, past the end
    idx.write_text("\n".join(lines) + "\n")
    with pytest.raises(RecordIOError, match=r"train\.rec: " + message):
        MXFaceDataset(tmp_path, num_classes=2)
    ds = MXFaceDataset(tmp_path, num_classes=2, label_check="lazy")
    assert int(ds[2][1]) == 1
    with pytest.raises(RecordIOError, match=r"\[key 1, dataset index 1\]"):
        ds[1]


def test_truncated_record_error_names_key(tmp_path):
    write_rec(tmp_path, [0.0, 1.0, 1.0], header=False)
    rec = tmp_path / "train.rec"
    offsets = [int(line.split("\t")[1]) for line in (tmp_path / "train.idx").read_text().splitlines()]
    rec.write_bytes(rec.read_bytes()[: offsets[2] + 40])
    with pytest.raises(RecordIOError, match=f"key 2: record at byte {offsets[2]} is truncated"):
        MXFaceDataset(tmp_path, num_classes=2)  # found by the scan
    ds = MXFaceDataset(tmp_path, num_classes=2, label_check="lazy")
    assert int(ds[1][1]) == 1
    with pytest.raises(RecordIOError, match=rf"record at byte {offsets[2]} is truncated.*\[key 2, dataset index 2\]"):
        ds[2]


def test_undecodable_payload_and_wrong_size(tmp_path):
    w = MXIndexedRecordIO(tmp_path / "train.idx", tmp_path / "train.rec", "w")
    w.write_idx(0, pack(IRHeader(0, 0.0, 0, 0), b"not an image"))
    w.write_idx(1, pack(IRHeader(0, 0.0, 1, 0), png(make_image(1, size=100))))
    w.close()
    ds = MXFaceDataset(tmp_path, num_classes=1)
    with pytest.raises(RecordIOError, match=r"train\.rec: key 0: payload of 12 bytes is not a decodable image"):
        ds[0]
    with pytest.raises(DatasetError, match=r"key 1: image is 100x100, expected 112x112"):
        ds[1]


def test_missing_files(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"nowhere: training data folder not found"):
        MXFaceDataset(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"train\.rec: RecordIO file not found"):
        MXFaceDataset(tmp_path)
    write_rec(tmp_path, [0.0])
    (tmp_path / "train.idx").unlink()
    hint = rf"train\.idx: index file not found; .*python -m tools\.rec2idx {tmp_path}/train\.rec"
    with pytest.raises(FileNotFoundError, match=hint):
        MXFaceDataset(tmp_path)
    with pytest.raises(ValueError, match="label_check='sometimes'"):
        MXFaceDataset(tmp_path, label_check="sometimes")


# ------------------------------------------------------------------------------------------
# deterministic flip
# ------------------------------------------------------------------------------------------
def test_flip_decision_is_a_fair_pure_function():
    decisions = [flip_decision(0, 0, i) for i in range(4000)]
    assert 1850 < sum(decisions) < 2150
    assert decisions == [flip_decision(0, 0, i) for i in range(4000)]
    other_epoch = [flip_decision(0, 1, i) for i in range(4000)]
    other_seed = [flip_decision(1, 0, i) for i in range(4000)]
    for other in (other_epoch, other_seed):
        agree = sum(a == b for a, b in zip(decisions, other))
        assert 1850 < agree < 2150  # independent, not copied or inverted


def test_flip_decisions_vectorised_equal_the_scalar_ones():
    indices = np.r_[np.arange(3000), [2**31, 2**40 + 7, 2**63 - 1]]
    for seed, epoch in ((0, 0), (7, 3), (2**40, 2**33 + 1)):
        expected = [flip_decision(seed, epoch, int(i)) for i in indices]
        assert dataset_mod.flip_decisions(seed, epoch, indices).tolist() == expected


def test_flip_follows_seed_epoch_index_not_global_rng(tmp_path):
    images = write_rec(tmp_path, [0.0] * 12)
    ds = MXFaceDataset(tmp_path, seed=7)
    flipped_per_epoch = []
    for epoch in (0, 1, 2):
        ds.set_epoch(epoch)
        assert ds.epoch == epoch
        flipped = []
        for i in range(12):
            torch.manual_seed(1000 * epoch + i)
            np.random.seed(i)
            x = ds[i][0].numpy()
            flip = flip_decision(7, epoch, i)
            np.testing.assert_array_equal(x, expected_tensor(images[i], flip))
            assert torch.equal(normalize_batch(ds[i][0]), torch.from_numpy(arcface_torch_tensor(images[i], flip)))
            flipped.append(flip)
        flipped_per_epoch.append(flipped)
        assert 0 < sum(flipped) < 12
    assert flipped_per_epoch[0] != flipped_per_epoch[1] != flipped_per_epoch[2]
    ds.set_epoch(1)
    x = ds[3][0]
    torch.manual_seed(0)
    assert torch.equal(ds[3][0], x)


# ------------------------------------------------------------------------------------------
# image folders, get_train_dataset
# ------------------------------------------------------------------------------------------
def make_tree(root: Path) -> dict[str, list[np.ndarray]]:
    images = {"b_id": [make_image(1), make_image(2)], "a_id": [make_image(3)], "c_id": [make_image(4)] * 2}
    for name, imgs in images.items():
        (root / name).mkdir(parents=True)
        for j, img in enumerate(imgs):
            cv2.imwrite(str(root / name / f"{j}.png"), img)
    return images


def test_image_folder_dataset(tmp_path):
    images = make_tree(tmp_path)
    ds = ImageFolderDataset(tmp_path, augment=False)
    assert ds.classes == ["a_id", "b_id", "c_id"] and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 1, 1, 2, 2]
    ordered = images["a_id"] + images["b_id"] + images["c_id"]
    for i, img in enumerate(ordered):
        x, y = ds[i]
        assert int(y) == ds.labels[i] and y.dtype == torch.int64
        np.testing.assert_array_equal(x.numpy(), expected_tensor(img))
    aug = ImageFolderDataset(tmp_path, seed=3)
    aug.set_epoch(5)
    for i, img in enumerate(ordered):
        np.testing.assert_array_equal(aug[i][0].numpy(), expected_tensor(img, flip_decision(3, 5, i)))
    with pytest.raises(DatasetError, match="3 identity folders but num_classes = 2"):
        ImageFolderDataset(tmp_path, num_classes=2)


def test_image_folder_unreadable_image_and_empty_identity(tmp_path):
    make_tree(tmp_path)
    bad = tmp_path / "b_id" / "9.jpg"
    bad.write_bytes(b"garbage")
    ds = ImageFolderDataset(tmp_path)
    with pytest.raises(DatasetError, match=rf"{bad}: cannot decode the image"):
        ds[3]
    (tmp_path / "d_empty").mkdir()
    with pytest.raises(DatasetError, match=r"d_empty: identity folder has no images"):
        ImageFolderDataset(tmp_path)


def test_get_train_dataset_picks_the_format(tmp_path):
    write_rec(tmp_path / "rec", LABELS)
    assert isinstance(get_train_dataset(tmp_path / "rec", seed=1, label_check="full"), MXFaceDataset)
    make_tree(tmp_path / "folder")
    ds = get_train_dataset(tmp_path / "folder", num_classes=3, seed=1, label_check="full")
    assert isinstance(ds, ImageFolderDataset) and ds.seed == 1
    (tmp_path / "empty").mkdir()
    for root in (tmp_path / "empty", tmp_path / "missing"):
        with pytest.raises(FileNotFoundError, match=rf"{root}: no training data"):
            get_train_dataset(root)


def test_dataset_pickles(tmp_path):
    write_rec(tmp_path, LABELS)
    ds = MXFaceDataset(tmp_path, seed=2)
    ds.set_epoch(3)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2.epoch == 3 and torch.equal(ds2[5][0], ds[5][0]) and ds2.labels.tolist() == ds.labels.tolist()


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
    assert torch.equal(dataset_mod.collate_faces([(torch.zeros(3, 2, 2), 1)] * 2)[0], torch.zeros(2, 3, 2, 2))


def test_persistent_workers_see_set_epoch(rec_ds):
    loader = DataLoaderX("cpu", dataset=rec_ds, batch_size=5, num_workers=2, persistent_workers=True,
                         background=True)
    seen = []
    for epoch in (0, 1, 2):
        loader.set_epoch(epoch)
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
        loader.set_epoch(1)  # forwarded to the sampler and the dataset
        assert sampler.epoch == 1 and rec_ds.epoch == 1
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
