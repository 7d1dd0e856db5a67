"""utils/dataset.py: MXFaceDataset (layouts, label scan, errors), ImageFolderDataset, get_train_dataset, flips."""

from __future__ import annotations

import hashlib
import json
import logging
import pickle
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

import utils.dataset as dataset_mod
from utils.dataset import ImageFolderDataset, MXFaceDataset, flip_decision, get_train_dataset
from utils.errors import DatasetError
from utils.loader import normalize_batch
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


def test_batched_read_equals_the_items(tmp_path):
    # the DataLoader's fetcher reads a batch with __getitems__: one (N, H, W, 3) buffer, the same
    # pixels, flips and labels as __getitem__ one index at a time
    write_rec(tmp_path, [float(i % 3) for i in range(8)])
    ds = MXFaceDataset(tmp_path, seed=5)
    ds.set_epoch(2)
    indices = [6, 1, 4, 0, 2]  # 4 and 2 mirrored in epoch 2
    batch = ds.__getitems__(indices)
    assert isinstance(batch, dataset_mod.FaceBatch) and len(batch) == len(indices)
    assert batch.images.shape == (5, 3, 112, 112) and batch.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(batch.images, torch.stack([ds[i][0] for i in indices]))
    assert batch.labels.tolist() == [int(ds[i][1]) for i in indices] == [0, 1, 1, 0, 2]
    assert [flip_decision(5, 2, i) for i in indices] == [False, False, True, False, True]
    assert all(torch.equal(x, ds[i][0]) and int(y) == int(ds[i][1]) for (x, y), i in zip(batch, indices))


def test_dataset_pickles(tmp_path):
    write_rec(tmp_path, LABELS)
    ds = MXFaceDataset(tmp_path, seed=2)
    ds.set_epoch(3)
    ds2 = pickle.loads(pickle.dumps(ds))
    assert ds2.epoch == 3 and torch.equal(ds2[5][0], ds[5][0]) and ds2.labels.tolist() == ds.labels.tolist()
