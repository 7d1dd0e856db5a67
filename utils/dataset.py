"""Face-recognition training data: the RecordIO and image-folder datasets, and the label scan.

Both datasets return ``(image, label)``: a uint8 tensor ``3 x H x W`` (RGB, decoded and maybe
mirrored, nothing else; a view of the decoded H x W x 3 pixels) and an int64 scalar class id.
Batching, the host-to-device copy and the float conversion are the loader's
(``utils/loader.py``: ``collate_faces`` stacks the views without a CHW copy, ``normalize_batch``
turns a batch into float32 in [-1, 1] on the device, so a quarter of the bytes cross PCIe and the
workers do no float work).

The training-time augmentation is a horizontal flip decided by a hash of
``(seed, epoch, index)``, never by a global RNG, so which images are mirrored does not depend on
worker processes, prefetching or where a run was resumed. ``set_epoch`` writes the epoch into a
shared-memory tensor, so that persistent DataLoader workers see it too.

RecordIO layouts read by :class:`MXFaceDataset`:

* insightface: record 0 is a header (flag > 0, empty payload, label ``[a, b]``); keys ``1..a-1``
  are images, keys ``a..b-1`` identity records whose label is the ``[start, end)`` key range of
  one class (``tools/im2rec.py`` writes this).
* plain: every key of the ``.idx`` is an image, in ``.idx`` order (``tools/shuffle_rec.py``
  writes this). A record 0 with flag > 0 whose payload is an image (an image with an array
  label) is read as an image, where insightface would take it for a header.

A label scan (one vectorised pass over the record headers, :meth:`MXFaceDataset._scan_labels`)
reads every class id up front, so that a bad label or an index that does not match the .rec is
reported before training starts.
"""

from __future__ import annotations

import logging
import math
import mmap
import os
import struct
from typing import Any, Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.errors import DatasetError
from utils.recordio import MAGIC, MXIndexedRecordIO, RecordIOError, unpack

__all__ = [
    "FaceBatch",
    "IMAGE_EXTENSIONS",
    "ImageFolderDataset",
    "MXFaceDataset",
    "flip_decision",
    "flip_decisions",
    "get_train_dataset",
    "list_image_folder",
    "read_property",
    "read_rec_layout",
]

logger = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
DEFAULT_IMAGE_SIZE = (112, 112)
LABEL_CHECKS = ("auto", "full", "lazy")
# label_check="auto" scans every label up front below this .rec size; above it, reading one
# header per record from a network disk can take longer than it is worth.
SCAN_LIMIT_BYTES = 4 << 30
_SCAN_CHUNK = 1 << 20  # records per vectorised read: bounds the label scan's memory (~60 MB)
_LENGTH_MASK = (1 << 29) - 1


# --------------------------------------------------------------------------------------------
# deterministic augmentation
# --------------------------------------------------------------------------------------------
_MASK64 = (1 << 64) - 1


def _mix64(x):
    # splitmix64 finaliser: a cheap, well-mixed 64-bit hash of an integer, or of every element of a
    # uint64 array (NumPy wraps at 64 bits by itself; the masks keep Python's ints there too)
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def flip_decision(seed: int, epoch: int, index: int) -> bool:
    """Whether sample ``index`` is mirrored in ``epoch``: a pure function of its three arguments."""
    h = _mix64(_mix64(_mix64(seed & _MASK64) ^ (epoch & _MASK64)) ^ (index & _MASK64))
    return bool(h >> 63)


def flip_decisions(seed: int, epoch: int, indices: np.ndarray) -> np.ndarray:
    """``flip_decision`` for many indices at once (the same hash on a uint64 array)."""
    epoch_key = np.uint64(_mix64(_mix64(seed & _MASK64) ^ (epoch & _MASK64)))
    return (_mix64(np.asarray(indices).astype(np.int64).view(np.uint64) ^ epoch_key) >> 63).astype(bool)


class _FaceDataset(Dataset):
    """Shared part of the face datasets: epoch state, flip, decoded image -> uint8 CHW tensor."""

    def __init__(self, augment: bool, seed: int, image_size: tuple[int, int]):
        self.augment = bool(augment)
        self.seed = int(seed)
        self.image_size = tuple(image_size)  # (height, width)
        # shared memory: persistent DataLoader workers (forked or spawned) read the epoch that
        # the main process sets, so set_epoch() works without restarting them
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose flips ``__getitem__`` applies; call before ``iter(loader)``."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch set by :meth:`set_epoch` (0 at first)."""
        return self._epoch.item()

    def _load(self, index: int) -> tuple[np.ndarray, int, str]:
        """(decoded H x W x 3 RGB pixels, class id, where it came from) of sample ``index``."""
        raise NotImplementedError

    def _checked(self, index: int) -> tuple[np.ndarray, int]:
        """(RGB pixels, class id) of sample ``index``, its size checked."""
        rgb, label, where = self._load(index)
        if rgb.shape[:2] != self.image_size:
            h, w = self.image_size
            raise DatasetError(
                f"{where}: image is {rgb.shape[1]}x{rgb.shape[0]}, expected {w}x{h} "
                f"(convert the data with `python -m tools.im2rec --resize`)"
            )
        return rgb, label

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        rgb, label = self._checked(index)
        flip = self.augment and flip_decision(self.seed, self.epoch, index)
        if flip:
            rgb = cv2.flip(rgb, 1)
        # a CHW view of the decoded HWC pixels, no copy: utils.loader.collate_faces stacks the HWC memory
        return torch.from_numpy(rgb).permute(2, 0, 1), _label_tensor(label)

    def __getitems__(self, indices: list[int]) -> "FaceBatch":
        """The samples of one batch, each written into one (N, H, W, 3) buffer as soon as it is
        decoded (flipped on the way), while it is still in the CPU cache; the DataLoader's
        fetcher calls this instead of ``__getitem__`` per index."""
        h, w = self.image_size
        images = _batch_buffer((len(indices), h, w, 3))
        rows = images.numpy()
        labels = np.empty(len(indices), np.int64)
        flips = flip_decisions(self.seed, self.epoch, indices) if self.augment else np.zeros(len(indices), bool)
        for row, (index, flip) in enumerate(zip(indices, flips.tolist())):
            rgb, labels[row] = self._checked(index)
            if flip:
                cv2.flip(rgb, 1, dst=rows[row])
            else:
                rows[row] = rgb
        return FaceBatch(images.permute(0, 3, 1, 2), torch.from_numpy(labels))


def _batch_buffer(shape: tuple[int, ...]) -> torch.Tensor:
    """An empty uint8 tensor; in a DataLoader worker in shared memory, as default_collate does,
    so that handing the batch to the main process copies nothing."""
    if torch.utils.data.get_worker_info() is None:
        # NumPy's malloc reuses the freed batches' pages; torch.empty maps fresh ones each time,
        # and their page faults cost a fifth of the decoding (20 us per 112x112 image)
        return torch.from_numpy(np.empty(shape, np.uint8))
    storage = torch.UntypedStorage._new_shared(math.prod(shape))
    return torch.empty(0, dtype=torch.uint8).set_(storage).view(shape)


class FaceBatch(list):
    """A batch from ``__getitems__``: the list of its samples (views), plus ``images`` (N, 3, H, W)
    uint8 laid out channels-last and ``labels`` (N,) int64, which ``utils.loader.collate_faces``
    returns as they are."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor):
        super().__init__(zip(images, labels))
        self.images = images
        self.labels = labels


# libjpeg-turbo writes RGB directly (OpenCV >= 4.10): no BGR -> RGB pass
_IMREAD_RGB = getattr(cv2, "IMREAD_COLOR_RGB", None)


def _decode(data: np.ndarray) -> np.ndarray | None:
    if data.size == 0:
        return None
    return cv2.imdecode(data, cv2.IMREAD_COLOR)


def _decode_rgb(data: np.ndarray) -> np.ndarray | None:
    """HxWx3 RGB uint8, or None when ``data`` is not an image."""
    if data.size == 0:
        return None
    if _IMREAD_RGB is not None:
        return cv2.imdecode(data, _IMREAD_RGB)
    bgr = cv2.imdecode(data, cv2.IMREAD_COLOR)
    return None if bgr is None else cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def _label_tensor(label: int) -> torch.Tensor:
    # 1 us instead of torch.tensor's 6.5: a tenth of what decoding a 112x112 JPEG costs
    return torch.from_numpy(np.array(label, dtype=np.int64))


def _class_id(value: float, where: str) -> int:
    if not np.isfinite(value) or value != int(value):
        raise DatasetError(f"{where}: label {value!r} is not an integer class id")
    return int(value)


def _label_error(where: str, label: Any, num_classes: int, source: str) -> DatasetError:
    return DatasetError(
        f"{where} has label {label}, outside [0, {num_classes}) "
        f"(num_classes = {num_classes} from {source})"
    )


# --------------------------------------------------------------------------------------------
# RecordIO
# --------------------------------------------------------------------------------------------
def read_property(root_dir: str | os.PathLike) -> tuple[int, int, int] | None:
    """``(num_classes, height, width)`` from ``root_dir/property``, or None if there is none."""
    path = os.path.join(os.fspath(root_dir), "property")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        text = f.read().strip()
    try:
        num_classes, h, w = (int(v) for v in text.split(","))
    except ValueError:
        raise DatasetError(f"{path}: expected 'num_classes,height,width', found {text!r}") from None
    if num_classes <= 0 or h <= 0 or w <= 0:
        raise DatasetError(f"{path}: values must be positive, found {text!r}")
    return num_classes, h, w


def _is_header(header, payload: bytes) -> bool:
    if header.flag < 2:
        return False
    first, end = float(header.label[0]), float(header.label[1])
    if first < 1 or end < first or first != int(first) or end != int(end):
        return False
    # an image record with an array label also has flag > 0: its payload decodes
    return _decode(np.frombuffer(payload, np.uint8)) is None


def read_rec_layout(record: MXIndexedRecordIO) -> tuple[np.ndarray, tuple[int, int] | None]:
    """Image keys of an indexed RecordIO and its header range ``(a, b)``, None for a plain file."""
    if not record.keys:
        raise RecordIOError(f"{record.idx_path}: the index is empty")
    if 0 in record.idx:
        header, payload = unpack(record.read_idx(0))
        if header.flag > 0 and _is_header(header, payload):
            first, end = int(header.label[0]), int(header.label[1])
            missing = next((k for k in range(1, end) if k not in record.idx), None)
            if missing is not None:
                raise RecordIOError(
                    f"{record.idx_path}: header record says keys 1..{end - 1} exist, but key "
                    f"{missing} is not in the index; rebuild it with "
                    f"`python -m tools.rec2idx {record.uri} --force`"
                )
            return np.arange(1, first, dtype=np.int64), (first, end)
    return np.asarray(record.keys, dtype=np.int64), None


# An image record starts with the 8-byte record header (magic, lrec) and the 24-byte IRHeader
# (flag, label, id, id2), then flag float32 labels when flag > 0. Records start 4-byte aligned,
# so the label scan reads these as uint32 words: 0 magic, 1 lrec, 2 flag, 3 label, 8 label[0].
_HEAD_BYTES = 32
_RECORD_HEAD = struct.Struct("<IIIf")  # magic, lrec, IRHeader flag, IRHeader label
_FLOAT = struct.Struct("<f")


class MXFaceDataset(_FaceDataset):
    """Images and labels of ``root_dir/train.rec`` + ``train.idx`` (insightface or plain layout)."""

    def __init__(
        self,
        root_dir: str | os.PathLike,
        num_classes: int | None = None,
        augment: bool = True,
        seed: int = 0,
        label_check: str = "auto",
    ):
        if label_check not in LABEL_CHECKS:
            raise ValueError(
                f"label_check={label_check!r}: expected one of {', '.join(LABEL_CHECKS)}"
            )
        self.root_dir = os.fspath(root_dir)
        self.path_rec = os.path.join(self.root_dir, "train.rec")
        self.path_idx = os.path.join(self.root_dir, "train.idx")
        _check_rec_files(self.root_dir, self.path_rec, self.path_idx)
        prop = read_property(self.root_dir)
        super().__init__(augment, seed, prop[1:] if prop else DEFAULT_IMAGE_SIZE)
        self.record = MXIndexedRecordIO(self.path_idx, self.path_rec, "r")
        self._map: mmap.mmap | bool | None = None  # opened at the first read, in each process
        self.keys, self.header0 = read_rec_layout(self.record)
        if len(self.keys) == 0:
            raise RecordIOError(f"{self.path_rec}: the header record lists no images")

        self.num_classes, self._nc_source = self._resolve_num_classes(num_classes, prop)
        self.labels: np.ndarray | None = None
        scan = label_check == "full" or (
            label_check == "auto" and os.path.getsize(self.path_rec) < SCAN_LIMIT_BYTES
        )
        if scan:
            self.labels = self._scan_labels()
            if self.num_classes is None:
                self.num_classes = int(self.labels.max()) + 1
                self._nc_source = "the largest label + 1"
            self._check_labels(self.labels)
        if self.num_classes is None:
            raise DatasetError(
                f"{self.root_dir}: cannot tell the number of classes: pass num_classes, add a "
                f"'property' file ('num_classes,112,112'), or use label_check='full'"
            )

    def _resolve_num_classes(self, num_classes: int | None, prop) -> tuple[int | None, str]:
        nc, source = num_classes, "the num_classes argument"
        if nc is not None and prop is not None and prop[0] != nc:
            logger.warning(
                "%s: property says %d classes, num_classes argument says %d; using %d",
                self.root_dir, prop[0], nc, nc,
            )
        if nc is None and prop is not None:
            nc, source = prop[0], os.path.join(self.root_dir, "property")
        if self.header0 is not None and self.header0[1] > self.header0[0]:
            identities = self.header0[1] - self.header0[0]
            if nc is None:
                nc, source = identities, f"the {identities} identity records of {self.path_rec}"
            elif identities != nc:
                # raised now rather than after hours of training with a wrong classifier size
                raise DatasetError(
                    f"{self.path_rec}: {identities} identity records (keys {self.header0[0]}.."
                    f"{self.header0[1] - 1}) but num_classes = {nc} (from {source})"
                )
        if nc is not None and nc <= 0:
            raise DatasetError(f"num_classes = {nc} (from {source}) must be positive")
        return nc, source

    def _scan_labels(self) -> np.ndarray:
        """Every image's class id, read with one vectorised pass over the record headers."""
        size = os.path.getsize(self.path_rec)
        if size < _HEAD_BYTES:
            raise RecordIOError(f"{self.path_rec}: file of {size} bytes holds no image record")
        idx = self.record.idx
        offsets = np.fromiter((idx[int(k)] for k in self.keys), np.int64, len(self.keys))
        labels = np.empty(len(self.keys), np.int64)
        words = np.memmap(self.path_rec, "<u4", "r", shape=(size // 4,))
        try:
            for start in range(0, len(offsets), _SCAN_CHUNK):
                stop = min(start + _SCAN_CHUNK, len(offsets))
                labels[start:stop] = self._scan_chunk(words, offsets[start:stop], start, size)
        finally:
            del words
        return labels

    def _scan_chunk(self, words: np.ndarray, off: np.ndarray, start: int, size: int) -> np.ndarray:
        rec = self.path_rec

        def fail(rows: np.ndarray, why: Callable[[int, int], str]) -> None:
            if rows.size:
                i = int(rows[0])
                key, pos = int(self.keys[start + i]), int(off[i])
                raise RecordIOError(f"{rec}: key {key}: {why(i, pos)}")

        fail(np.flatnonzero(off + _HEAD_BYTES > size), lambda i, pos: (
            f"record at byte {pos} is truncated or past the end of the file ({size} bytes); "
            f"the .idx may not belong to this .rec"))
        fail(np.flatnonzero(off % 4), lambda i, pos: (
            f"byte {pos} is not a record boundary (records are 4-byte aligned); the .idx is "
            f"corrupt: rebuild it with `python -m tools.rec2idx {rec} --force`"))
        w = off // 4
        magic = words[w]
        fail(np.flatnonzero(magic != MAGIC), lambda i, pos: (
            f"no record at byte {pos} (magic {int(magic[i]):#010x}); the .idx does not "
            f"match the .rec: rebuild it with `python -m tools.rec2idx {rec} --force`"))
        lrec, flag = words[w + 1], words[w + 2]
        cflag, length = lrec >> 29, (lrec & _LENGTH_MASK).astype(np.int64)
        fail(np.flatnonzero(cflag > 1), lambda i, pos: (
            f"byte {pos} is the middle of a split record (cflag {int(cflag[i])}); "
            f"the .idx is corrupt"))
        need = np.where(flag > 0, 28, 24)  # IRHeader, plus the first float of an array label
        whole = cflag == 0
        fail(np.flatnonzero(whole & (length < need)), lambda i, pos: (
            f"record at byte {pos} has {int(length[i])} bytes, too short for an image header"))
        fail(np.flatnonzero(off + 8 + length > size), lambda i, pos: (
            f"record at byte {pos} is truncated (need {8 + int(length[i])} bytes, "
            f"file ends after {size - pos})"))

        labels = words[w + 3].view("<f4").astype(np.float64)
        arr = np.flatnonzero((flag > 0) & (length >= need))
        labels[arr] = words[w[arr] + 8].view("<f4")
        # rare: the payload had the magic number inside its first bytes, so the header is split
        # over record parts; read those few through the reader
        for i in np.flatnonzero(~whole & (length < need)):
            header, _ = unpack(self.record.read_idx(int(self.keys[start + i])))
            labels[i] = header.label if header.flag == 0 else header.label[0]

        bad = np.flatnonzero(~np.isfinite(labels) | (labels != np.floor(labels)))
        if bad.size:
            i = int(bad[0])
            _class_id(float(labels[i]), f"{rec}: key {int(self.keys[start + i])}")
        return labels.astype(np.int64)

    def _check_labels(self, labels: np.ndarray) -> None:
        bad = np.flatnonzero((labels < 0) | (labels >= self.num_classes))
        if bad.size:
            i = int(bad[0])
            where = f"{self.path_rec}: key {int(self.keys[i])}"
            raise _label_error(where, int(labels[i]), self.num_classes, self._nc_source)

    def __len__(self) -> int:
        return len(self.keys)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_map"] = None  # a memory map does not pickle: each worker maps the file itself
        return state

    def _read_mapped(self, key: int) -> tuple[float, np.ndarray] | None:
        """(label, payload) of a whole image record, viewed in a memory map of the .rec without a
        copy; None where the record is split, malformed or the file cannot be mapped (the
        reader then reads it, and names what is wrong)."""
        if self._map is None:
            try:
                with open(self.path_rec, "rb") as f:
                    self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
            except (OSError, ValueError):  # an empty file, or a file system without mmap
                self._map = False
        if self._map is False:
            return None
        pos = self.record.idx[key]
        if pos + _HEAD_BYTES > len(self._map):
            return None
        magic, lrec, flag, label = _RECORD_HEAD.unpack_from(self._map, pos)
        length = lrec & _LENGTH_MASK
        skip = 24 + 4 * flag  # IRHeader + an array label
        if magic != MAGIC or lrec >> 29 or length < skip or pos + 8 + length > len(self._map):
            return None
        if flag:
            label = _FLOAT.unpack_from(self._map, pos + 32)[0]
        return label, np.frombuffer(self._map, np.uint8, length - skip, pos + 8 + skip)

    def _load(self, index: int) -> tuple[np.ndarray, int, str]:
        key = int(self.keys[index])
        where = f"{self.path_rec}: key {key}"
        mapped = self._read_mapped(key)
        if mapped is not None:
            raw, data = mapped
        else:
            try:
                header, payload = unpack(self.record.read_idx(key))
            except RecordIOError as e:
                msg = str(e) if self.path_rec in str(e) else f"{self.path_rec}: {e}"
                raise type(e)(f"{msg} [key {key}, dataset index {index}]") from e
            raw = header.label if header.flag == 0 else header.label[0]
            data = np.frombuffer(payload, np.uint8)
        label = _class_id(float(raw), where)
        if not 0 <= label < self.num_classes:
            raise _label_error(where, label, self.num_classes, self._nc_source)
        img = _decode_rgb(data)
        if img is None:
            raise RecordIOError(
                f"{where}: payload of {data.size} bytes is not a decodable image"
            )
        return img, label, where


def _check_rec_files(root: str, rec: str, idx: str) -> None:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: training data folder not found")
    if not os.path.isfile(rec):
        raise FileNotFoundError(f"{rec}: RecordIO file not found")
    if not os.path.isfile(idx):
        raise FileNotFoundError(
            f"{idx}: index file not found; rebuild it from the .rec with "
            f"`python -m tools.rec2idx {rec}`"
        )


# --------------------------------------------------------------------------------------------
# image folders
# --------------------------------------------------------------------------------------------
def list_image_folder(root_dir: str | os.PathLike) -> tuple[list[str], list[int], list[str]]:
    """Image paths, class ids and class names of a tree with one sub-folder per identity.

    Identities are the sorted sub-folder names (class 0..C-1); images are the sorted files with
    an image extension directly inside each; hidden entries are skipped.
    """
    root = os.fspath(root_dir)
    if not os.path.isdir(root):
        raise FileNotFoundError(f"{root}: image folder not found")
    names = sorted(e.name for e in os.scandir(root) if e.is_dir() and not e.name.startswith("."))
    if not names:
        raise DatasetError(
            f"{root}: no identity sub-folders (expected one folder of images per identity)"
        )
    paths, labels = [], []
    for label, name in enumerate(names):
        folder = os.path.join(root, name)
        files = sorted(
            e.name for e in os.scandir(folder)
            if e.is_file() and not e.name.startswith(".")
            and e.name.lower().endswith(IMAGE_EXTENSIONS)
        )
        if not files:
            # an empty class would still take a class id and break identity ranges
            raise DatasetError(
                f"{folder}: identity folder has no images ({', '.join(IMAGE_EXTENSIONS)}); remove it"
            )
        paths += [os.path.join(folder, f) for f in files]
        labels += [label] * len(files)
    return paths, labels, names


class ImageFolderDataset(_FaceDataset):
    """Images of ``root_dir/<identity>/<image>``; identities sorted by name are classes 0..C-1."""

    def __init__(
        self,
        root_dir: str | os.PathLike,
        num_classes: int | None = None,
        augment: bool = True,
        seed: int = 0,
        image_size: tuple[int, int] = DEFAULT_IMAGE_SIZE,
    ):
        super().__init__(augment, seed, image_size)
        self.root_dir = os.fspath(root_dir)
        self.paths, labels, self.classes = list_image_folder(self.root_dir)
        self.labels = np.asarray(labels, dtype=np.int64)
        found = len(self.classes)
        if num_classes is not None and num_classes < found:
            raise DatasetError(
                f"{self.root_dir}: {found} identity folders but num_classes = {num_classes}"
            )
        if num_classes is not None and num_classes > found:
            logger.warning(
                "%s: %d identity folders, num_classes = %d", self.root_dir, found, num_classes
            )
        self.num_classes = found if num_classes is None else int(num_classes)

    def __len__(self) -> int:
        return len(self.paths)

    def _load(self, index: int) -> tuple[np.ndarray, int, str]:
        path = self.paths[index]
        img = _decode_rgb(np.fromfile(path, dtype=np.uint8))
        if img is None:
            raise DatasetError(f"{path}: cannot decode the image (corrupt or not an image)")
        return img, int(self.labels[index]), path


def get_train_dataset(root_dir: str | os.PathLike, **kw) -> Dataset:
    """``MXFaceDataset`` if ``root_dir/train.rec`` exists, else an ``ImageFolderDataset``."""
    root = os.fspath(root_dir)
    if os.path.isfile(os.path.join(root, "train.rec")):
        return MXFaceDataset(root, **kw)
    has_folders = os.path.isdir(root) and any(
        e.is_dir() and not e.name.startswith(".") for e in os.scandir(root)
    )
    if has_folders:
        kw.pop("label_check", None)  # an image folder always knows its labels
        return ImageFolderDataset(root, **kw)
    raise FileNotFoundError(
        f"{root}: no training data: expected train.rec + train.idx (insightface RecordIO) "
        f"or one sub-folder of images per identity"
    )
