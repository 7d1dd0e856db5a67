"""utils/images.py: the one image encoder of tools/im2rec.py and tools/make_bin.py."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from tools import im2rec, make_bin
from utils.images import encode_face, resize_face


def smooth(rng: np.random.Generator, size: int) -> np.ndarray:
    small = rng.integers(0, 256, size=(6, 6, 3)).astype(np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def decode(data: bytes) -> np.ndarray:
    return cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)


def test_resize_interpolation_area_to_shrink_cubic_to_enlarge():
    rng = np.random.default_rng(0)
    big, small = smooth(rng, 150), smooth(rng, 56)
    area = cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_face(big, (112, 112)), area)
    up = resize_face(small, (112, 112))
    np.testing.assert_array_equal(up, cv2.resize(small, (112, 112), interpolation=cv2.INTER_CUBIC))
    assert not np.array_equal(up, cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR))
    # one side larger, the other smaller: counts as shrinking (AREA)
    wide = smooth(rng, 120)[:100]
    area = cv2.resize(wide, (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(resize_face(wide, (112, 112)), area)


def test_both_tools_store_the_same_bytes(tmp_path):
    rng = np.random.default_rng(1)
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), smooth(rng, 56))
    via_rec = im2rec.encode_image(str(small), 112, resize=True, quality=90)
    via_bin = make_bin.encode_image(str(small), (112, 112), resize=True, quality=90)
    assert via_rec == via_bin == encode_face(small, (112, 112), True, "jpg", 90)
    png = encode_face(small, (112, 112), resize=True, fmt="png")  # lossless: the resized pixels
    cubic = cv2.resize(cv2.imread(str(small)), (112, 112), interpolation=cv2.INTER_CUBIC)
    np.testing.assert_array_equal(decode(png), cubic)


def test_keep_returns_the_file_and_errors_name_it(tmp_path):
    rng = np.random.default_rng(2)
    jpg = tmp_path / "a.jpg"
    cv2.imwrite(str(jpg), smooth(rng, 112))
    raw = jpg.read_bytes()
    assert encode_face(jpg, keep=("jpg",)) == raw
    assert encode_face(jpg, keep=("png",)) != raw and encode_face(jpg)[:3] == b"\xff\xd8\xff"
    assert encode_face(jpg, fmt="png")[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match=r"a\.jpg: image is 112x112, expected 96x96; pass --resize"):
        encode_face(jpg, (96, 96))
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image")
    with pytest.raises(ValueError, match=r"bad\.jpg: cannot decode"):
        encode_face(bad)
    with pytest.raises(ValueError, match="unknown image encoding 'gif'; known: jpg, png"):
        encode_face(jpg, fmt="gif")
