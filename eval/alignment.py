"""5-point face alignment to the ArcFace 112x112 template (insightface ``face_align`` semantics).

``estimate_norm`` returns the least-squares similarity transform (rotation, uniform scale,
translation; no reflection) mapping the 5 detected landmarks onto the template. That is the
transform ``skimage.transform.SimilarityTransform.estimate`` (Umeyama) gives, which insightface
uses; we solve the equivalent 4-parameter linear least-squares problem with NumPy, so neither
scikit-image nor OpenCV's robust (LMEDS/RANSAC) estimators are needed.
"""

from __future__ import annotations

import cv2
import numpy as np

# Left eye, right eye, nose tip, left mouth corner, right mouth corner (image coordinates,
# "left" = left side of the image) in a 112x112 crop.
ARCFACE_TEMPLATE = np.array(
    [
        [38.2946, 51.6963],
        [73.5318, 51.5014],
        [56.0252, 71.7366],
        [41.5493, 92.3655],
        [70.7299, 92.2041],
    ],
    dtype=np.float32,
)


def template_for_size(image_size: int = 112) -> np.ndarray:
    """The ArcFace template scaled to ``image_size`` (insightface: multiples of 112 or of 128)."""
    if image_size % 112 == 0:
        ratio, shift_x = image_size / 112.0, 0.0
    elif image_size % 128 == 0:
        # insightface centres the 112-wide template in a 128-wide crop (8 px margin at 128)
        ratio = image_size / 128.0
        shift_x = 8.0 * ratio
    else:
        raise ValueError(f"image_size must be a multiple of 112 or 128, got {image_size}")
    dst = ARCFACE_TEMPLATE.astype(np.float64) * ratio
    dst[:, 0] += shift_x
    return dst


def similarity_lstsq(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2x3) mapping ``src`` points (K, 2) onto ``dst`` points (K, 2).

    Parametrised as [[a, -b, tx], [b, a, ty]]: linear in (a, b, tx, ty), and every proper
    similarity with scale >= 0 has this form, so the minimiser equals Umeyama's.
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 2)
    if src.shape != dst.shape or len(src) < 2:
        raise ValueError(f"need >= 2 matching points, got src {src.shape} and dst {dst.shape}")
    # Centre both sets: the translation then decouples and the 2x2 system is better conditioned.
    src_mean, dst_mean = src.mean(0), dst.mean(0)
    s, d = src - src_mean, dst - dst_mean
    denom = float((s**2).sum())
    if denom == 0.0:
        raise ValueError("landmarks are all the same point; cannot estimate a similarity")
    a = float((s[:, 0] * d[:, 0] + s[:, 1] * d[:, 1]).sum()) / denom
    b = float((s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum()) / denom
    rot = np.array([[a, -b], [b, a]])
    t = dst_mean - rot @ src_mean
    return np.hstack([rot, t[:, None]])


def estimate_norm(landmarks5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """2x3 similarity matrix (float64) warping an image so ``landmarks5`` land on the template."""
    lmk = np.asarray(landmarks5, dtype=np.float64)
    if lmk.shape != (5, 2):
        lmk = lmk.reshape(-1)
        if lmk.size != 10:
            raise ValueError(f"expected 5 landmarks (5, 2), got shape {np.shape(landmarks5)}")
        lmk = lmk.reshape(5, 2)
    if not np.all(np.isfinite(lmk)):
        raise ValueError(f"landmarks contain NaN/inf: {lmk.tolist()}")
    return similarity_lstsq(lmk, template_for_size(image_size))


def norm_crop(img_bgr: np.ndarray, landmarks5: np.ndarray, image_size: int = 112) -> np.ndarray:
    """Aligned ``image_size`` x ``image_size`` crop of ``img_bgr`` (uint8, same channel order)."""
    if img_bgr is None or img_bgr.ndim not in (2, 3):
        shape = None if img_bgr is None else img_bgr.shape
        raise ValueError(f"expected an HxW or HxWxC image, got {shape}")
    mat = estimate_norm(landmarks5, image_size)
    crop = cv2.warpAffine(img_bgr, mat, (image_size, image_size), borderValue=0.0)
    if crop.ndim == 2:  # grey input: the networks expect 3 channels
        crop = np.repeat(crop[:, :, None], 3, axis=2)
    return crop
