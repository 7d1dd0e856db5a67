"""Aligned faces read from image files, in batches: the one image reader of IJB and MegaFace.

:class:`AlignedFaces` reads image ``i`` and aligns it with its 5 landmarks
(eval.alignment.norm_crop) or, without landmarks, takes it as an already aligned crop; item ``i``
is a (3, S, S) uint8 RGB tensor. :func:`iter_batches` stacks the items in order, read ahead by
threads while the caller embeds the previous batch.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Iterator, Sequence

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from eval.alignment import norm_crop
from utils.errors import DatasetError

__all__ = ["AlignedFaces", "iter_batches", "read_face"]

# landmarks of one image: (5, 2) float32, or None for an image that is already an aligned crop
Landmarks = Callable[[int], "np.ndarray | None"]


def read_face(
    path: str,
    landmarks: np.ndarray | None,
    image_size: int = 112,
    where: str = "",
    no_landmarks: str = "no landmarks to align it with",
) -> np.ndarray:
    """The aligned ``image_size`` crop of the image at ``path`` as (S, S, 3) uint8 RGB.

    ``landmarks`` None: the image must already be an aligned crop of that size (DatasetError
    saying ``no_landmarks`` otherwise). ``where`` (e.g. "row 3 of the list") goes into errors.
    """
    where = f" ({where})" if where else ""
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        reason = "missing" if not os.path.exists(path) else "not a readable image"
        raise FileNotFoundError(f"image {path} is {reason}{where}")
    if landmarks is not None:
        img = norm_crop(img, landmarks, image_size)
    elif img.shape[:2] != (image_size, image_size):
        raise DatasetError(
            f"{path}: image is {img.shape[1]}x{img.shape[0]}, not an aligned {image_size}x"
            f"{image_size} crop, and has {no_landmarks}{where}"
        )
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


class AlignedFaces(Dataset):
    """Item ``i``: the face of ``paths[i]``, aligned, as a (3, S, S) uint8 RGB tensor.

    ``landmarks``: an (N, 5, 2) array (one set per image), or a function of the index giving
    an image's landmarks or None (then the image must already be an aligned crop), or None for
    a list of aligned crops. The mirrored view for the flip test is made on whole batches by
    the embedder (eval.embedder.mirror), not here.
    """

    def __init__(
        self,
        paths: Sequence[str],
        landmarks: np.ndarray | Landmarks | None = None,
        image_size: int = 112,
        no_landmarks: str = "no landmarks to align it with",
    ):
        self.paths = list(paths)
        if landmarks is not None and not callable(landmarks):
            landmarks = np.asarray(landmarks, np.float32).reshape(-1, 5, 2)
            if len(landmarks) != len(self.paths):
                raise ValueError(f"{len(self.paths)} images but {len(landmarks)} landmark sets")
        self.landmarks = landmarks
        self.image_size = image_size
        self.no_landmarks = no_landmarks

    def __len__(self) -> int:
        return len(self.paths)

    def landmarks_of(self, index: int) -> np.ndarray | None:
        """The 5 landmarks of image ``index``, or None when it is an aligned crop already."""
        if self.landmarks is None:
            return None
        if callable(self.landmarks):
            return self.landmarks(index)
        return self.landmarks[index]

    def __getitem__(self, index: int) -> torch.Tensor:
        rgb = read_face(self.paths[index], self.landmarks_of(index), self.image_size,
                        where=f"row {index + 1} of the list", no_landmarks=self.no_landmarks)
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def iter_batches(
    faces: Dataset, batch_size: int, num_workers: int, pin_memory: bool = False
) -> Iterator[torch.Tensor]:
    """The faces stacked in (B, 3, S, S) batches, in order, read by ``num_workers`` threads ahead.

    Threads, not processes: cv2.imread and the alignment's warpAffine release the GIL, so the
    threads decode in parallel while the caller embeds the previous batch, with no worker start-up
    (a spawned process imports torch: seconds) and no copies between processes. ``num_workers=0``
    reads in the caller's thread. Each batch is read by one thread, so the order of the items and
    the pixels are the same as a sequential read.
    """
    starts = range(0, len(faces), batch_size)

    def read(start: int) -> torch.Tensor:
        batch = torch.stack([faces[i] for i in range(start, min(start + batch_size, len(faces)))])
        return batch.pin_memory() if pin_memory else batch

    if num_workers <= 0:
        yield from map(read, starts)
        return
    with ThreadPoolExecutor(num_workers) as pool:
        pending: deque = deque()
        for start in starts:
            pending.append(pool.submit(read, start))
            if len(pending) > 2 * num_workers:  # bounded read-ahead: memory stays a few batches
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
