"""Two augmented views of one face image (UniMoCo's query and key), deterministic per sample.

The augmentations are FaceCL's (torchvision recipes) redone with NumPy/OpenCV on uint8 RGB:

* ``MoCo2``: RandomResizedCrop(112, scale (0.2, 1)), ColorJitter(0.4, 0.4, 0.4, 0.1) with
  p 0.8, grayscale with p 0.2, Gaussian blur sigma in [0.1, 2] with p 0.5, horizontal flip;
* ``MoCo2_NoCrop`` (the default): the same without the crop;
* ``ArcFace``: horizontal flip only.

They are registered in :data:`AUGMENTATIONS` (a ``utils.registry.Registry``: names are looked up
case-insensitively, an unknown one is an ``UnknownNameError`` naming the known ones).

Every random number comes from a NumPy Generator seeded with (seed, epoch, index, view), never
from a global RNG, so the views do not depend on DataLoader workers, prefetching or where a run
was resumed (as the ContraFace flip, ``utils.dataset.flip_decision``).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Callable

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from utils.dataset import get_train_dataset
from utils.errors import DatasetError
from utils.registry import Registry
from utils.sampler import read_labels_txt

__all__ = ["AUGMENTATIONS", "TwoViewDataset", "get_augmentation", "two_view_train_set", "view_rng"]

log = logging.getLogger(__name__)

Augmentation = Callable[[np.ndarray, np.random.Generator], np.ndarray]
AUGMENTATIONS: Registry[Augmentation] = Registry("augmentation")

# ITU-R 601-2 luma, as PIL's convert("L") that torchvision's grayscale uses
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def view_rng(seed: int, epoch: int, index: int, view: int) -> np.random.Generator:
    """The generator of one view of one sample in one epoch: a pure function of its arguments."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, int(epoch), int(index), int(view)])


def _to_uint8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def _gray(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ _LUMA


def _blend(img: np.ndarray, other: np.ndarray | float, factor: float) -> np.ndarray:
    # PIL's ImageEnhance: other + factor * (img - other), clipped to uint8
    return _to_uint8(other + np.float32(factor) * (img.astype(np.float32) - other))


def _brightness(img: np.ndarray, factor: float) -> np.ndarray:
    return _blend(img, 0.0, factor)


def _contrast(img: np.ndarray, factor: float) -> np.ndarray:
    return _blend(img, float(np.rint(_gray(img).mean())), factor)


def _saturation(img: np.ndarray, factor: float) -> np.ndarray:
    return _blend(img, _gray(img)[..., None], factor)


def _hue(img: np.ndarray, factor: float) -> np.ndarray:
    # PIL's HSV has hue in 0..255, shifted with uint8 wrap-around (torchvision's adjust_hue)
    hsv = cv2.cvtColor(img, cv2.COLOR_RGB2HSV_FULL)
    hsv[..., 0] = (hsv[..., 0].astype(np.int16) + int(factor * 255) % 256) % 256
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB_FULL)


def _color_jitter(img: np.ndarray, rng: np.random.Generator, strength=(0.4, 0.4, 0.4, 0.1)) -> np.ndarray:
    """torchvision's ColorJitter: the four adjustments in a random order, each with a random factor."""
    b, c, s, h = strength
    factors = (rng.uniform(1 - b, 1 + b), rng.uniform(1 - c, 1 + c), rng.uniform(1 - s, 1 + s), rng.uniform(-h, h))
    ops = (_brightness, _contrast, _saturation, _hue)
    for i in rng.permutation(4):
        img = ops[i](img, factors[i])
    return img


def _random_resized_crop(
    img: np.ndarray, rng: np.random.Generator, size: int = 112, scale=(0.2, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
    """torchvision's RandomResizedCrop: 10 tries at a box of random area and aspect, else the centre."""
    height, width = img.shape[:2]
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(rng.integers(0, height - h + 1))
            left = int(rng.integers(0, width - w + 1))
            break
    else:
        in_ratio = width / height
        if in_ratio < ratio[0]:
            w, h = width, int(round(width / ratio[0]))
        elif in_ratio > ratio[1]:
            h, w = height, int(round(height * ratio[1]))
        else:
            w, h = width, height
        top, left = (height - h) // 2, (width - w) // 2
    crop = img[top : top + h, left : left + w]
    return cv2.resize(crop, (size, size), interpolation=cv2.INTER_LINEAR)


def _gaussian_blur(img: np.ndarray, rng: np.random.Generator, sigma=(0.1, 2.0)) -> np.ndarray:
    s = rng.uniform(*sigma)
    return cv2.GaussianBlur(img, (0, 0), sigmaX=s, sigmaY=s, borderType=cv2.BORDER_REFLECT)


@AUGMENTATIONS.register("MoCo2")
def moco2(img: np.ndarray, rng: np.random.Generator, crop: bool = True) -> np.ndarray:
    """MoCo v2's augmentation of one uint8 HxWx3 RGB image (FaceCL's ``MoCo2``)."""
    if crop:
        img = _random_resized_crop(img, rng, size=img.shape[0])
    if rng.random() < 0.8:
        img = _color_jitter(img, rng)
    if rng.random() < 0.2:
        img = np.repeat(_to_uint8(_gray(img))[..., None], 3, axis=2)
    if rng.random() < 0.5:
        img = _gaussian_blur(img, rng)
    return horizontal_flip(img, rng)


@AUGMENTATIONS.register("MoCo2_NoCrop")
def moco2_nocrop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """MoCo v2's augmentation without the random resized crop (FaceCL's ``MoCo2_NoCrop``)."""
    return moco2(img, rng, crop=False)


@AUGMENTATIONS.register("ArcFace")
def horizontal_flip(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A horizontal flip with p 0.5 and nothing else (FaceCL's ``ArcFace``)."""
    return np.ascontiguousarray(img[:, ::-1]) if rng.random() < 0.5 else img


def get_augmentation(name: str) -> Augmentation:
    """The augmentation registered as ``name`` (MoCo2, MoCo2_NoCrop, ArcFace; any case)."""
    return AUGMENTATIONS.get(name)


def _as_hwc_uint8(image: torch.Tensor | np.ndarray) -> np.ndarray:
    """An RGB image of the base dataset (uint8 CHW or HWC) as uint8 HWC."""
    array = image.numpy() if isinstance(image, torch.Tensor) else np.asarray(image)
    if array.ndim != 3:
        raise ValueError(f"expected one 3-channel image, got shape {array.shape}")
    if array.dtype != np.uint8:
        # the face datasets hand out uint8 pixels; normalising is the trainer's, after the views
        raise TypeError(f"expected a uint8 image, got {array.dtype}")
    if array.shape[0] == 3 and array.shape[-1] != 3:
        array = array.transpose(1, 2, 0)
    return np.ascontiguousarray(array)


class TwoViewDataset(Dataset):
    """``(views, label)``: two independent augmentations of each image of ``base`` as uint8 (2, 3, H, W).

    ``base`` must return un-augmented RGB images (build it with ``augment=False``); the views
    are normalised on the device by the trainer. ``labels`` (every image's class, for the
    class-group sampler) default to the base's; ``num_classes`` is the base's.
    """

    def __init__(
        self, base: Dataset, augmentation: str = "MoCo2_NoCrop", seed: int = 0, labels: np.ndarray | None = None
    ):
        self.base = base
        self._labels = labels
        self.augmentation = AUGMENTATIONS.canonical(augmentation)
        self.augment = AUGMENTATIONS.get(augmentation)
        self.seed = int(seed)
        # shared memory: persistent DataLoader workers see the epoch the main process sets
        self._epoch = torch.zeros(1, dtype=torch.int64).share_memory_()

    @property
    def labels(self) -> np.ndarray | None:
        """Every image's class id (for the class-group sampler), or None where the base has none."""
        return self._labels if self._labels is not None else getattr(self.base, "labels", None)

    @property
    def num_classes(self) -> int:
        """The base dataset's number of classes."""
        return self.base.num_classes

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose views ``__getitem__`` draws."""
        self._epoch[0] = int(epoch)

    @property
    def epoch(self) -> int:
        """The epoch set by :meth:`set_epoch` (0 at first)."""
        return int(self._epoch.numpy()[0])

    def __len__(self) -> int:
        return len(self.base)

    def views(self, image: np.ndarray, index: int, epoch: int) -> np.ndarray:
        """The two views (2, 3, H, W) uint8 of one uint8 HxWx3 RGB image."""
        out = [self.augment(image, view_rng(self.seed, epoch, index, v)) for v in (0, 1)]
        return np.stack(out).transpose(0, 3, 1, 2)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        image, label = self.base[index]
        pair = self.views(_as_hwc_uint8(image), int(index), self.epoch)
        return torch.from_numpy(np.ascontiguousarray(pair)), torch.as_tensor(label, dtype=torch.long)


def two_view_train_set(
    root_dir: str, num_classes: int | None = None, augmentation: str = "MoCo2_NoCrop", seed: int = 0
) -> TwoViewDataset:
    """The training set of ``root_dir`` (RecordIO or image folders) as view pairs, with every label known.

    The labels come from FaceCL's ``labels.txt`` where the folder has one (no scan of the .rec),
    else from one vectorised pass over the record headers (``label_check="full"``, whatever the
    .rec's size: the class-group sampler needs them all up front).
    """
    labels_txt = os.path.join(root_dir, "labels.txt")
    from_txt = os.path.isfile(os.path.join(root_dir, "train.rec")) and os.path.isfile(labels_txt)
    base = get_train_dataset(
        root_dir, num_classes=num_classes, augment=False, seed=seed, label_check="auto" if from_txt else "full"
    )
    labels = None
    if from_txt:
        labels = read_labels_txt(labels_txt, base.keys)
        bad = np.flatnonzero((labels < 0) | (labels >= base.num_classes))
        if bad.size:
            i = int(bad[0])
            raise DatasetError(
                f"{labels_txt}: key {int(base.keys[i])} has label {int(labels[i])}, outside "
                f"[0, {base.num_classes}) (num_classes)"
            )
        log.info(f"labels of {len(labels)} images from {labels_txt}")
    return TwoViewDataset(base, augmentation, seed=seed, labels=labels)
