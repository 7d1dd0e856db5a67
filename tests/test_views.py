"""utils/views.py: FaceCL's augmentations on uint8 RGB, deterministic per (seed, epoch, index, view)."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from utils.errors import UnknownNameError
from utils.views import AUGMENTATIONS, TwoViewDataset, _color_jitter, _random_resized_crop, get_augmentation, view_rng


class Faces(torch.utils.data.Dataset):
    """Four uint8 CHW RGB images with labels, like the base datasets hand out."""

    labels = np.array([0, 0, 1, 1])
    num_classes = 2

    def __init__(self):
        rng = np.random.default_rng(0)
        self.images = rng.integers(0, 256, size=(4, 3, 112, 112), dtype=np.uint8)

    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.from_numpy(self.images[i]), torch.tensor(int(self.labels[i]))


def test_views_are_a_pure_function_of_seed_epoch_index_view():
    data = TwoViewDataset(Faces(), "MoCo2", seed=3)
    data.set_epoch(2)
    first = [data[i][0] for i in range(4)]
    assert first[0].shape == (2, 3, 112, 112) and first[0].dtype == torch.uint8
    assert not torch.equal(first[0][0], first[0][1])  # two independent views
    # the same in DataLoader workers, in any order
    loader = DataLoader(data, batch_size=2, num_workers=2, sampler=[3, 2, 1, 0])
    again = torch.cat([views for views, _ in loader])
    assert all(torch.equal(again[3 - i], first[i]) for i in range(4))
    data.set_epoch(3)
    assert not torch.equal(data[0][0], first[0])
    data.set_epoch(2)
    assert torch.equal(data[0][0], first[0])
    assert data[1][1].item() == 0 and data.labels.tolist() == [0, 0, 1, 1] and data.num_classes == 2


def test_arcface_is_a_flip_or_the_image():
    data = TwoViewDataset(Faces(), "ArcFace", seed=0)
    image = torch.from_numpy(Faces().images[1])
    flips = 0
    for epoch in range(8):
        data.set_epoch(epoch)
        for view in data[1][0]:
            flipped = torch.equal(view, image.flip(-1))
            assert flipped or torch.equal(view, image)
            flips += flipped
    assert 2 <= flips <= 14  # p = 0.5 over 16 draws


def test_base_images_must_be_uint8():
    class FloatFaces(Faces):
        def __getitem__(self, i):
            return torch.zeros(3, 112, 112), torch.tensor(0)

    hwc = Faces().images[0].transpose(1, 2, 0)

    class HWCFaces(Faces):
        def __getitem__(self, i):
            return torch.from_numpy(np.ascontiguousarray(hwc)), torch.tensor(0)

    assert torch.equal(TwoViewDataset(HWCFaces(), "ArcFace")[0][0], TwoViewDataset(Faces(), "ArcFace")[0][0])
    with pytest.raises(TypeError, match="expected a uint8 image, got float32"):
        TwoViewDataset(FloatFaces(), "ArcFace")[0]


def test_color_jitter_keeps_gray_gray_and_crop_size():
    gray = np.full((112, 112, 3), 100, np.uint8)
    out = _color_jitter(gray, view_rng(0, 0, 0, 0))
    assert out.dtype == np.uint8 and (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    ramp = np.tile(np.arange(112, dtype=np.uint8)[None, :, None], (112, 1, 3))
    crop = _random_resized_crop(ramp, view_rng(0, 0, 0, 1), size=112)
    assert crop.shape == (112, 112, 3)
    # a crop of a horizontal ramp stays a non-decreasing ramp (resized, never rotated)
    assert (np.diff(crop[50, :, 0].astype(int)) >= 0).all()


def test_registry():
    assert list(AUGMENTATIONS) == ["MoCo2", "MoCo2_NoCrop", "ArcFace"]
    assert get_augmentation("moco2") is AUGMENTATIONS["MoCo2"]  # any case
    assert TwoViewDataset(Faces(), "moco2_nocrop").augmentation == "MoCo2_NoCrop"
    with pytest.raises(UnknownNameError, match=r"unknown augmentation 'MoCo3'; did you mean 'MoCo2'.*"
                                               r"\(known: MoCo2, MoCo2_NoCrop, ArcFace\)"):
        get_augmentation("MoCo3")
    assert issubclass(UnknownNameError, ValueError)
