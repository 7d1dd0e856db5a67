"""eval/alignment.py: similarity estimation against the ArcFace template, and the warp."""

import cv2
import numpy as np
import pytest

from eval.alignment import ARCFACE_TEMPLATE, estimate_norm, norm_crop, template_for_size


def umeyama_similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Umeyama (1991) least-squares similarity via SVD, written independently for the test."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    n = len(src)
    mu_s, mu_d = src.mean(0), dst.mean(0)
    sc, dc = src - mu_s, dst - mu_d
    cov = dc.T @ sc / n
    u, sig, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(cov) < 0:
        d[-1] = -1
    rot = u @ np.diag(d) @ vt
    var_s = (sc**2).sum() / n
    scale = (sig * d).sum() / var_s
    t = mu_d - scale * rot @ mu_s
    return np.hstack([scale * rot, t[:, None]])


def apply(mat: np.ndarray, pts: np.ndarray) -> np.ndarray:
    return pts @ mat[:, :2].T + mat[:, 2]


def test_template_maps_to_itself():
    mat = estimate_norm(ARCFACE_TEMPLATE)
    np.testing.assert_allclose(mat, [[1, 0, 0], [0, 1, 0]], atol=1e-9)


def test_known_similarity_recovered_exactly():
    # Landmarks = inverse of a known similarity applied to the template -> we must recover it.
    angle, scale, tx, ty = np.deg2rad(23.0), 0.37, 15.5, -7.25
    c, s = np.cos(angle), np.sin(angle)
    fwd = np.array([[scale * c, -scale * s, tx], [scale * s, scale * c, ty]])
    inv = cv2.invertAffineTransform(fwd)
    lmk = apply(inv, ARCFACE_TEMPLATE.astype(np.float64))
    mat = estimate_norm(lmk)
    np.testing.assert_allclose(mat, fwd, atol=1e-9)
    np.testing.assert_allclose(apply(mat, lmk), ARCFACE_TEMPLATE, atol=1e-4)


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_umeyama_on_noisy_points(seed):
    rng = np.random.default_rng(seed)
    lmk = ARCFACE_TEMPLATE * rng.uniform(1.5, 3) + rng.uniform(0, 200, 2) + rng.normal(0, 4, (5, 2))
    mat = estimate_norm(lmk)
    ref = umeyama_similarity(lmk, ARCFACE_TEMPLATE)
    np.testing.assert_allclose(mat, ref, atol=1e-8)
    # It is a proper similarity (no reflection) and least-squares: perturbing it costs more.
    assert mat[0, 0] == pytest.approx(mat[1, 1]) and mat[0, 1] == pytest.approx(-mat[1, 0])
    err = ((apply(mat, lmk) - ARCFACE_TEMPLATE) ** 2).sum()
    # Perturb within the similarity family (a, b, tx, ty), both signs.
    basis = [[[1, 0, 0], [0, 1, 0]], [[0, -1, 0], [1, 0, 0]], [[0, 0, 1], [0, 0, 0]],
             [[0, 0, 0], [0, 0, 1]]]
    for delta in np.array(basis, np.float64) * 1e-3:
        for sign in (1, -1):
            assert ((apply(mat + sign * delta, lmk) - ARCFACE_TEMPLATE) ** 2).sum() > err


def test_template_sizes():
    np.testing.assert_allclose(template_for_size(224), ARCFACE_TEMPLATE * 2, rtol=1e-6)
    t128 = template_for_size(128)
    np.testing.assert_allclose(t128[:, 0], ARCFACE_TEMPLATE[:, 0] + 8, rtol=1e-6)
    with pytest.raises(ValueError, match="multiple of 112 or 128"):
        template_for_size(100)
    with pytest.raises(ValueError, match="5 landmarks"):
        estimate_norm(np.zeros((4, 2)))


def test_norm_crop_moves_marks_onto_template():
    # Draw bright dots at landmark positions of a scaled, rotated, shifted face in a big image;
    # after norm_crop the dots must sit on the template positions.
    angle, scale = np.deg2rad(-15.0), 2.2
    c, s = np.cos(angle), np.sin(angle)
    fwd = np.array([[scale * c, -scale * s, 60.0], [scale * s, scale * c, 90.0]])
    lmk = apply(fwd, ARCFACE_TEMPLATE.astype(np.float64))
    img = np.zeros((400, 360, 3), np.uint8)
    for i, (x, y) in enumerate(lmk):
        cv2.circle(img, (int(round(x)), int(round(y))), 5, (0, 40 * (i + 1), 255), -1)
    crop = norm_crop(img, lmk)
    assert crop.shape == (112, 112, 3) and crop.dtype == np.uint8
    for i, (x, y) in enumerate(ARCFACE_TEMPLATE):
        b, g, r = crop[int(round(y)), int(round(x))]
        assert r > 200 and abs(int(g) - 40 * (i + 1)) < 30, (i, crop[int(y), int(x)])
    # Outside the source image the border is black.
    far = np.array([[5000.0, 5000.0]]) + ARCFACE_TEMPLATE
    assert norm_crop(img, far).max() == 0
    # Grey input gives 3 identical channels.
    grey = norm_crop(img[:, :, 2], lmk)
    assert grey.shape == (112, 112, 3) and (grey[..., 0] == grey[..., 2]).all()
