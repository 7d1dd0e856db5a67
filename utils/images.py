"""Face images for the data tools: decode a file, check or resize it to the face size, encode it.

``tools/im2rec.py`` (``.rec`` payloads) and ``tools/make_bin.py`` (verification ``.bin`` images)
store images through :func:`encode_face`, so both resize and encode the same way.
"""

from __future__ import annotations

import os

import cv2
import numpy as np

__all__ = ["ENCODINGS", "MAGIC", "resize_face", "encode_face"]

ENCODINGS = {"jpg": ".jpg", "png": ".png"}
# the first bytes of a file in each encoding: a right-size file can be stored as it is
MAGIC = {"jpg": b"\xff\xd8\xff", "png": b"\x89PNG\r\n\x1a\n"}


def resize_face(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``img`` resized to ``size`` (H, W): INTER_AREA when it shrinks, INTER_CUBIC when it enlarges."""
    height, width = size
    shrink = img.shape[0] > height or img.shape[1] > width
    # AREA averages the source pixels (no aliasing); enlarging a small face, CUBIC keeps the
    # eye and mouth edges sharper than LINEAR, and the cost does not matter in an offline tool.
    interpolation = cv2.INTER_AREA if shrink else cv2.INTER_CUBIC
    return cv2.resize(img, (width, height), interpolation=interpolation)


def encode_face(
    path: str | os.PathLike,
    size: tuple[int, int] = (112, 112),
    resize: bool = False,
    fmt: str = "jpg",
    quality: int = 95,
    keep: tuple[str, ...] = (),
) -> bytes:
    """The bytes to store for the image file at ``path`` (H, W = ``size``).

    A right-size file already encoded in one of ``keep`` (e.g. ``("jpg", "png")``) is returned
    byte for byte; anything else is decoded, resized when ``resize`` (else a wrong size is a
    ``ValueError`` naming the file) and encoded as ``fmt`` (JPEG at ``quality``, or PNG).
    """
    path = os.fspath(path)
    if fmt not in ENCODINGS:
        raise ValueError(f"unknown image encoding {fmt!r}; known: {', '.join(ENCODINGS)}")
    raw = np.fromfile(path, dtype=np.uint8)
    img = cv2.imdecode(raw, cv2.IMREAD_COLOR) if raw.size else None
    if img is None:
        raise ValueError(f"{path}: cannot decode the image (corrupt or not an image)")
    height, width = size
    if img.shape[:2] != (height, width):
        if not resize:
            raise ValueError(
                f"{path}: image is {img.shape[1]}x{img.shape[0]}, expected {width}x{height}; "
                f"pass --resize to resize it"
            )
        img = resize_face(img, size)
    elif any(raw[: len(MAGIC[k])].tobytes() == MAGIC[k] for k in keep):
        return raw.tobytes()
    if fmt == "jpg":
        params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)]
    else:
        params = [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, buf = cv2.imencode(ENCODINGS[fmt], img, params)
    if not ok:
        raise ValueError(f"{path}: OpenCV could not encode the image as {fmt}")
    return buf.tobytes()
