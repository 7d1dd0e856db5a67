"""eval/faces.py: the aligned-face reader of IJB and MegaFace (read, align, batch, threads)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch

from eval.alignment import ARCFACE_TEMPLATE, norm_crop
from eval.faces import AlignedFaces, iter_batches, read_face
from utils.errors import DatasetError


@pytest.fixture()
def images(tmp_path):
    """Two 112x112 aligned crops and one 150x140 photo whose face sits at 2x the template."""
    rng = np.random.default_rng(0)
    paths = []
    for i, (h, w) in enumerate([(112, 112), (112, 112), (150, 140)]):
        img = cv2.resize(rng.integers(0, 256, size=(7, 7, 3), dtype=np.uint8), (w, h),
                         interpolation=cv2.INTER_CUBIC)
        paths.append(str(tmp_path / f"{i}.png"))  # PNG: the pixels come back exactly
        cv2.imwrite(paths[-1], img)
    return paths


def test_read_face_aligns_or_takes_an_aligned_crop(images):
    bgr = cv2.imread(images[0])
    np.testing.assert_array_equal(read_face(images[0], None), bgr[:, :, ::-1])  # RGB
    landmarks = ARCFACE_TEMPLATE * 1.2 + 3
    photo = cv2.imread(images[2])
    np.testing.assert_array_equal(read_face(images[2], landmarks), norm_crop(photo, landmarks)[:, :, ::-1])
    with pytest.raises(DatasetError, match=r"2.png: image is 140x150, not an aligned 112x112 crop, and has no "
                                           r"landmarks to align it with"):
        read_face(images[2], None)
    with pytest.raises(DatasetError, match="and has no sidecar"):
        read_face(images[2], None, no_landmarks="no sidecar")
    with pytest.raises(FileNotFoundError, match=r"nope.png is missing \(row 9\)"):
        read_face(images[0].replace("0.png", "nope.png"), None, where="row 9")
    text = images[0].replace("0.png", "text.png")
    open(text, "w").write("not an image")
    with pytest.raises(FileNotFoundError, match="text.png is not a readable image"):
        read_face(text, None)


def test_aligned_faces_landmark_sources(images):
    landmarks = np.stack([ARCFACE_TEMPLATE, ARCFACE_TEMPLATE, ARCFACE_TEMPLATE * 1.2 + 3])
    by_array = AlignedFaces(images, landmarks)
    by_function = AlignedFaces(images, lambda i: landmarks[i] if i == 2 else None)
    assert len(by_array) == 3
    for i in range(3):
        item = by_function[i]
        assert item.shape == (3, 112, 112) and item.dtype == torch.uint8 and item.is_contiguous()
        expected = read_face(images[i], None if i < 2 else landmarks[i])
        np.testing.assert_array_equal(item.numpy(), expected.transpose(2, 0, 1))
    # the template's own points give (almost) the identity warp: the same crop up to rounding
    assert (by_array[0].int() - by_function[0].int()).abs().max() <= 1
    with pytest.raises(DatasetError, match=r"140x150.*\(row 3 of the list\)"):
        AlignedFaces(images)[2]  # no landmarks for the photo
    with pytest.raises(ValueError, match="3 images but 2 landmark sets"):
        AlignedFaces(images, landmarks[:2])


@pytest.mark.parametrize("workers", [0, 1, 3])
def test_iter_batches_in_order(images, workers):
    faces = AlignedFaces(images * 3, lambda i: ARCFACE_TEMPLATE * 1.2 + 3 if i % 3 == 2 else None)
    batches = list(iter_batches(faces, 4, num_workers=workers))
    assert [len(b) for b in batches] == [4, 4, 1]
    assert torch.equal(torch.cat(batches), torch.stack([faces[i] for i in range(len(faces))]))
