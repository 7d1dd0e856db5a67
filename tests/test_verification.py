"""Tests for eval/verification.py: .bin loading, insightface's 10-fold protocol, verify(), test()."""

from __future__ import annotations

import os
import pickle
import pickletools
import struct

import cv2
import numpy as np
import pytest
import scipy
import sklearn.preprocessing
import torch
from scipy import interpolate
from scipy.interpolate import BSpline
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold

from eval import verification as ver

# --------------------------------------------------------------------------------------------------
# Fixture builders
# --------------------------------------------------------------------------------------------------


def _png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))
    assert ok
    return buf.tobytes()


def _images(n: int, size: int = 16, seed: int = 0) -> list[np.ndarray]:
    """n RGB images: noise (PNG > 255 bytes) alternating with flat colours (PNG < 256 bytes)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        if i % 2 == 0:
            out.append(rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8))
        else:
            out.append(np.full((size, size, 3), (10 * i, 200, 255 - 10 * i), dtype=np.uint8))
    return out


def _py2_str(data: bytes) -> bytes:
    # Python 2 str under protocol 2: SHORT_BINSTRING (< 256 bytes) or BINSTRING
    if len(data) < 256:
        return b"U" + bytes([len(data)]) + data
    return b"T" + struct.pack("<i", len(data)) + data


def _py2_bin(images: list[bytes], issame: list[bool]) -> bytes:
    """What Python 2's cPickle.dump((bins, issame_list), f, 2) writes, memo puts included."""
    counter = iter(range(1 << 30))

    def put() -> bytes:
        i = next(counter)
        return b"q" + bytes([i]) if i < 256 else b"r" + struct.pack("<I", i)

    out = b"\x80\x02]" + put()
    for start in range(0, len(images), 1000):
        out += b"(" + b"".join(_py2_str(im) + put() for im in images[start:start + 1000]) + b"e"
    out += b"]" + put() + b"(" + b"".join(b"\x88" if s else b"\x89" for s in issame) + b"e"
    return out + b"\x86" + put() + b"."


def _py2_ndarray(arr: np.ndarray) -> bytes:
    """A numpy array as Python 2 + numpy 1.x pickled it (cfp_fp.bin stores cv2.imencode arrays)."""
    descr = {np.dtype(np.uint8): b"u1", np.dtype(bool): b"b1"}[arr.dtype]
    shape = b"(" + b"".join(b"M" + struct.pack("<H", d) for d in arr.shape) + b"t"
    dtype = (b"cnumpy\ndtype\n" + _py2_str(descr) + b"K\x00K\x01\x87R"
             + b"(K\x03" + _py2_str(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb")
    return (b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85"
            + _py2_str(b"b") + b"\x87R"
            + b"(K\x01" + shape + dtype + b"\x89" + _py2_str(arr.tobytes()) + b"tb")


def _write(tmp_path, name: str, data: bytes) -> str:
    path = tmp_path / name
    path.write_bytes(data)
    return str(path)


def _opcodes(data: bytes) -> set[str]:
    return {op.name for op, _, _ in pickletools.genops(data)}


# --------------------------------------------------------------------------------------------------
# load_bin
# --------------------------------------------------------------------------------------------------


def _check_loaded(loaded, rgbs: list[np.ndarray], issame: list[bool]) -> None:
    (images, flipped), flags = loaded
    assert flags == issame and all(type(f) is bool for f in flags)
    assert images.dtype == torch.uint8 and flipped.dtype == torch.uint8
    assert images.shape == (len(rgbs), 3, 16, 16)
    expected = np.stack([r.transpose(2, 0, 1) for r in rgbs])  # RGB, CHW
    np.testing.assert_array_equal(images.numpy(), expected)
    np.testing.assert_array_equal(flipped.numpy(), expected[..., ::-1])  # mirrored along the width


def test_load_python2_style_bin(tmp_path):
    rgbs = _images(6)
    bins = [_png(r) for r in rgbs]
    data = _py2_bin(bins, [True, False, True])
    assert {"SHORT_BINSTRING", "BINSTRING"} <= _opcodes(data)  # both Python 2 str opcodes
    with pytest.raises(UnicodeDecodeError):  # really Python-2 style: plain pickle.load fails
        pickle.loads(data)
    loaded = ver.load_bin(_write(tmp_path, "py2.bin", data), (16, 16))
    _check_loaded(loaded, rgbs, [True, False, True])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_python3_bin(tmp_path, protocol):
    rgbs = _images(4, seed=1)
    data = pickle.dumps(([_png(r) for r in rgbs], [False, True]), protocol=protocol)
    if protocol == 2:  # Python 3 writes bytes as _codecs.encode(text, 'latin1') under protocol 2
        assert "GLOBAL" in _opcodes(data)
    _check_loaded(ver.load_bin(_write(tmp_path, "py3.bin", data), (16, 16)), rgbs, [False, True])


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_load_numpy_images_and_issame(tmp_path, protocol):
    # insightface's cfp/agedb scripts append cv2.imencode() results (uint8 ndarrays) to the list
    rgbs = _images(4, seed=2)
    bins = [cv2.imencode(".png", np.ascontiguousarray(r[..., ::-1]))[1] for r in rgbs]
    data = pickle.dumps((bins, np.array([True, False])), protocol=protocol)
    _check_loaded(ver.load_bin(_write(tmp_path, "np.bin", data), (16, 16)), rgbs, [True, False])
    # numpy bool scalars in a list
    data = pickle.dumps((bins, [np.True_, np.False_]), protocol=protocol)
    _check_loaded(ver.load_bin(_write(tmp_path, "np2.bin", data), (16, 16)), rgbs, [True, False])


def test_load_python2_numpy_bin(tmp_path):
    rgbs = _images(4, seed=3)
    arrays = [cv2.imencode(".png", np.ascontiguousarray(r[..., ::-1]))[1] for r in rgbs]
    data = (b"\x80\x02(" + b"".join(_py2_ndarray(a) for a in arrays) + b"l"
            + _py2_ndarray(np.array([False, True])) + b"\x86.")
    # the hand-made pickle is what numpy itself reads back (so the fixture is realistic)
    real_bins, real_issame = pickle.loads(data, encoding="bytes")
    assert all(np.array_equal(a, b) for a, b in zip(real_bins, arrays))
    assert real_issame.tolist() == [False, True]
    _check_loaded(ver.load_bin(_write(tmp_path, "py2np.bin", data), (16, 16)), rgbs, [False, True])


class _MakeDir:
    """Unpickling this would create a directory: the side effect the loader must never allow."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


# the unpickler's own cases (variants, arrays, dtypes) are in tests/test_safe_pickle.py
@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_malicious_pickle_is_refused_without_side_effects(tmp_path, protocol):
    target = tmp_path / "pwned"
    payload = pickle.dumps(([_MakeDir(str(target)), _png(_images(1)[0])], [True]),
                           protocol=protocol)
    path = _write(tmp_path, "evil.bin", payload)
    with pytest.raises(ver.BinFileError) as err:
        ver.load_bin(path, (16, 16))
    assert not target.exists()
    assert path in str(err.value) and "refusing to load global" in str(err.value)
    assert "mkdir" in str(err.value)


def test_structure_errors_name_file_and_item(tmp_path):
    good = [_png(r) for r in _images(2)]
    cases = {
        "not_pair.bin": (pickle.dumps([1, 2, 3]), "expected a pickled pair"),
        "count.bin": (pickle.dumps((good + good[:1], [True])), "3 images for 1 pairs"),
        "undecodable.bin": (pickle.dumps((good[:1] + [b"not an image"], [True])),
                            r"image 1 \(pair 0\)"),
        "not_bytes.bin": (pickle.dumps(([7, good[0]], [True])), "image 0 is a int"),
        "flag.bin": (pickle.dumps((good, ["yes"])), r"issame\[0\]"),
        "truncated.bin": (pickle.dumps((good, [True]))[:-20], "not a readable"),
        "float_array.bin": (pickle.dumps((good, np.array([1.0]))), "dtype .f8. is not allowed"),
    }
    for name, (data, message) in cases.items():
        path = _write(tmp_path, name, data)
        with pytest.raises(ver.BinFileError, match=message) as err:
            ver.load_bin(path, (16, 16))
        assert path in str(err.value)
    with pytest.raises(FileNotFoundError, match="missing.bin"):
        ver.load_bin(tmp_path / "missing.bin")


def test_resize_like_insightface_and_refuse_other_aspect(tmp_path):
    rgbs = _images(2, size=8)
    path = _write(tmp_path, "small.bin", pickle.dumps(([_png(r) for r in rgbs], [True])))
    (images, flipped), _ = ver.load_bin(path, (16, 16))
    for img, rgb in zip(images, rgbs):
        expected = cv2.resize(rgb[..., ::-1], (16, 16), interpolation=cv2.INTER_CUBIC)[..., ::-1]
        np.testing.assert_array_equal(img.numpy(), expected.transpose(2, 0, 1))
    np.testing.assert_array_equal(flipped.numpy(), images.numpy()[..., ::-1])
    tall = np.zeros((12, 8, 3), dtype=np.uint8)
    path = _write(tmp_path, "tall.bin", pickle.dumps(([_png(tall), _png(tall)], [False])))
    with pytest.raises(ver.BinFileError, match="image 0 .*8x12.*aspect"):
        ver.load_bin(path, (16, 16))


# --------------------------------------------------------------------------------------------------
# evaluate: an independent, literal oracle of insightface's algorithm
# --------------------------------------------------------------------------------------------------


def _oracle_accuracy(threshold, dist, issame):
    predict = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predict, issame))
    fp = np.sum(np.logical_and(predict, np.logical_not(issame)))
    tn = np.sum(np.logical_and(np.logical_not(predict), np.logical_not(issame)))
    fn = np.sum(np.logical_and(np.logical_not(predict), issame))
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def _oracle_splits(n, folds):
    if folds == 1:
        return [(np.arange(n), np.arange(n))]
    return KFold(n_splits=folds, shuffle=False).split(np.arange(n))


def _old_scipy_slinear(x, y):
    """interp1d(x, y, 'slinear') as SciPy <= 1.9 built it: stable sort, k=1 spline, no dup check."""
    order = np.argsort(x, kind="mergesort")
    x, y = x[order], y[order]
    return BSpline.construct_fast(np.r_[x[0], x, x[-1]], np.ascontiguousarray(y), 1)


def _oracle_evaluate(embeddings, issame, folds=10, pca=0, interp="scipy"):
    """insightface's evaluate, loop by loop; interp: 'scipy' (installed) or 'old' (SciPy <= 1.9)."""
    issame = np.asarray(issame)
    e1, e2 = embeddings[0::2], embeddings[1::2]
    n = len(issame)
    thresholds = np.arange(0, 4, 0.01)
    tprs, fprs = np.zeros((folds, len(thresholds))), np.zeros((folds, len(thresholds)))
    accuracy = np.zeros(folds)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    for f, (train, test) in enumerate(_oracle_splits(n, folds)):
        if pca > 0:
            model = PCA(n_components=pca)
            model.fit(np.concatenate((e1[train], e2[train]), axis=0))
            p1 = sklearn.preprocessing.normalize(model.transform(e1))
            p2 = sklearn.preprocessing.normalize(model.transform(e2))
            dist = np.sum(np.square(np.subtract(p1, p2)), 1)
        d_train, s_train, d_test, s_test = dist[train], issame[train], dist[test], issame[test]
        acc_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            _, _, acc_train[i] = _oracle_accuracy(t, d_train, s_train)
        best = np.argmax(acc_train)
        for i, t in enumerate(thresholds):
            tprs[f, i], fprs[f, i], _ = _oracle_accuracy(t, d_test, s_test)
        _, _, accuracy[f] = _oracle_accuracy(thresholds[best], d_test, s_test)

    thresholds = np.arange(0, 4, 0.001)
    dist = np.sum(np.square(np.subtract(e1, e2)), 1)
    val, far = np.zeros(folds), np.zeros(folds)
    for f, (train, test) in enumerate(_oracle_splits(n, folds)):
        d_train, diff_train = dist[train], ~issame[train]
        far_train = np.zeros(len(thresholds))
        for i, t in enumerate(thresholds):
            far_train[i] = np.sum(np.less(d_train, t) & diff_train) / float(np.sum(diff_train))
        if np.max(far_train) >= 1e-3:
            if interp == "scipy":
                threshold = interpolate.interp1d(far_train, thresholds, kind="slinear")(1e-3)
            else:
                threshold = _old_scipy_slinear(far_train, thresholds)(1e-3)
        else:
            threshold = 0.0
        predict = np.less(dist[test], threshold)
        val[f] = np.sum(predict & issame[test]) / float(np.sum(issame[test]))
        far[f] = np.sum(predict & ~issame[test]) / float(np.sum(~issame[test]))
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, np.mean(val), np.std(val), np.mean(far)


def _assert_same_results(ours, oracle):
    for name, a, b in zip(("tpr", "fpr", "accuracy", "val", "val_std", "far"), ours, oracle):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=name)


def _pairs_with_distances(dist: np.ndarray, dim: int = 4, seed: int = 0) -> np.ndarray:
    """Interleaved embeddings (e1, e2 per pair) whose squared distances are ``dist``."""
    rng = np.random.default_rng(seed)
    e1 = rng.normal(size=(len(dist), dim))
    direction = rng.normal(size=(len(dist), dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    out = np.empty((2 * len(dist), dim))
    out[0::2], out[1::2] = e1, e1 + direction * np.sqrt(dist)[:, None]
    return out


def test_evaluate_hand_computed():
    # 20 pairs, 10 folds of 2 (pair 2k same, 2k+1 different). Exact squared distances:
    # same 0.5 (=.5^2+.5^2), different 2.0 (=1+1), except same pair 6 (fold 3) at 3.0 (=1+1+1).
    emb = np.zeros((40, 3))
    for k in range(10):
        emb[4 * k + 1] = [1.0, 1.0, 1.0] if k == 3 else [0.5, 0.5, 0.0]
        emb[4 * k + 3] = [1.0, 1.0, 0.0]
    issame = [True, False] * 10
    tpr, fpr, accuracy, val, val_std, far = ver.evaluate(emb, issame)
    # folds without the hard pair train on it: best threshold is the first above 0.5 (0.51), which
    # classifies both test pairs right; fold 3 trains without it, picks 0.51, misses its 3.0 pair.
    np.testing.assert_array_equal(accuracy, [1, 1, 1, 0.5, 1, 1, 1, 1, 1, 1])
    assert np.mean(accuracy) == pytest.approx(0.95) and np.std(accuracy) == pytest.approx(0.15)
    assert tpr[0] == 0 and fpr[0] == 0
    assert tpr[100] == pytest.approx(0.9) and fpr[100] == 0  # threshold 1.0: fold 3's pair fails
    assert tpr[350] == 1 and fpr[350] == 1  # threshold 3.5 accepts everything
    # VAL@FAR: train FAR is 0 up to threshold 2.000 and 1 from 2.001; the slinear interpolant
    # between (0, 2.000) and (1, 2.001) puts FAR 1e-3 at 2.000001 > 2.0: the 2.0 pairs are accepted.
    assert far == 1.0 and val == pytest.approx(0.9) and val_std == pytest.approx(0.3)
    _assert_same_results((tpr, fpr, accuracy, val, val_std, far),
                         _oracle_evaluate(emb, issame, interp="old"))


@pytest.mark.parametrize("seed,folds,pca",
                         [(0, 10, 0), (1, 5, 0), (2, 10, 3), (3, 2, 0), (4, 1, 0), (5, 3, 2)])
def test_evaluate_equals_literal_oracle_random(seed, folds, pca):
    # Small random sets: the FAR curve repeats values, so SciPy >= 1.10's interp1d raises and the
    # reference is the SciPy <= 1.9 interpolant (the one insightface's numbers were produced with).
    rng = np.random.default_rng(seed)
    n = int(rng.integers(30, 120))
    emb = rng.normal(size=(2 * n, 6))
    issame = rng.random(n) < 0.5
    emb[1::2][issame] = emb[0::2][issame] + 0.7 * rng.normal(size=(issame.sum(), 6))
    emb = sklearn.preprocessing.normalize(emb)
    _assert_same_results(ver.evaluate(emb, list(issame), nrof_folds=folds, pca=pca),
                         _oracle_evaluate(emb, issame, folds, pca, interp="old"))
    # ... and the installed SciPy indeed cannot run insightface's code on them
    dist = np.sum(np.square(emb[0::2] - emb[1::2]), 1)
    thresholds = np.arange(0, 4, 0.001)
    far_train = np.array([np.sum((dist < t) & ~issame) for t in thresholds]) / np.sum(~issame)
    assert len(np.unique(far_train)) < len(far_train)
    if tuple(int(v) for v in scipy.__version__.split(".")[:2]) >= (1, 10):
        with pytest.raises(ValueError, match="duplicates"):
            interpolate.interp1d(far_train, thresholds, kind="slinear")


@pytest.mark.parametrize("seed,folds", [(0, 10), (1, 4)])
def test_evaluate_equals_installed_scipy_without_repeated_far(seed, folds):
    # Every 0.001-wide threshold step holds a different pair in every training set, so the train FAR
    # strictly increases and the installed SciPy's interp1d runs: insightface's code verbatim.
    rng = np.random.default_rng(seed)
    diff = (np.arange(3999) + rng.uniform(0.2, 0.8, size=3999)) * 1e-3
    same = rng.uniform(0.0, 2.0, size=600)
    dist = np.concatenate([diff, same])
    issame = np.r_[np.zeros(3999, bool), np.ones(600, bool)]
    order = rng.permutation(len(dist))
    # the list twice: the two copies of a pair are half the set apart, so in different folds
    dist, issame = np.tile(dist[order], 2), np.tile(issame[order], 2)
    emb = _pairs_with_distances(dist, seed=seed)
    _assert_same_results(ver.evaluate(emb, issame, nrof_folds=folds),
                         _oracle_evaluate(emb, issame, folds, interp="scipy"))


def test_interpolate_threshold_matches_scipy():
    rng = np.random.default_rng(0)
    thresholds = np.arange(0, 4, 0.001)
    for _ in range(50):
        far = np.sort(rng.integers(0, 40, size=len(thresholds))) / 40.0  # repeats everywhere
        # inside the curve's range (interp1d's bounds), on knots and between them
        knot = float(far[rng.integers(0, 4000)])
        for target in (1e-3, knot, float(rng.uniform(far[0], far[-1]))):
            if far[0] <= target < far[-1]:
                expected = float(_old_scipy_slinear(far, thresholds)(target))
                assert ver.interpolate_threshold(far, thresholds, target) == expected
        unique = np.unique(far)  # no repeats: the installed interp1d
        y = rng.uniform(0, 4, size=len(unique))
        for target in (unique[0], unique[-1], float(rng.uniform(unique[0], unique[-1]))):
            assert ver.interpolate_threshold(unique, y, target) == float(
                interpolate.interp1d(unique, y, kind="slinear")(target))
    # documented edges: the target equal to a repeated maximum gives that maximum's last threshold,
    # a target below the curve the first threshold
    far = np.array([0.0, 0.0, 0.5, 0.5])
    assert ver.interpolate_threshold(far, np.array([0.0, 1.0, 2.0, 3.0]), 0.5) == 3.0
    assert ver.interpolate_threshold(far + 0.1, np.array([0.0, 1.0, 2.0, 3.0]), 0.05) == 0.0
    # between repeated values: from the last threshold of FAR 0 (1.0) to the first of FAR 0.5 (2.0)
    assert ver.interpolate_threshold(far, np.array([0.0, 1.0, 2.0, 3.0]), 0.25) == 1.5


def test_evaluate_rejects_bad_shapes():
    with pytest.raises(ValueError, match="2 embeddings per pair"):
        ver.evaluate(np.zeros((5, 4)), [True, False])
    with pytest.raises(ValueError, match="folds"):
        ver.evaluate(np.zeros((6, 4)), [True, False, True], nrof_folds=10)


# --------------------------------------------------------------------------------------------------
# test(): a fixed linear "backbone" on flattened pixels
# --------------------------------------------------------------------------------------------------


class _LeftHalfLinear(torch.nn.Module):
    """A fixed linear map of the left half of the image; records the mode it ran in."""

    def __init__(self, size: int, dim: int = 8) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.size = size
        self.weight = torch.nn.Parameter(torch.randn(dim, 3 * size * (size // 2), generator=gen))
        self.modes: list[bool] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.modes.append(self.training)
        return x[..., : self.size // 2].flatten(1) @ self.weight.t()


def _left_same_set(tmp_path, pairs: int, size: int = 8):
    """Same pairs share the left half (right half random), different pairs share nothing."""
    rng = np.random.default_rng(7)
    rgbs, issame = [], []
    for p in range(pairs):
        a = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        b = rng.integers(0, 256, size=(size, size, 3), dtype=np.uint8)
        same = p % 2 == 0
        if same:
            b[:, : size // 2] = a[:, : size // 2]
        rgbs += [a, b]
        issame.append(same)
    path = _write(tmp_path, "set.bin", _py2_bin([_png(r) for r in rgbs], issame))
    return ver.load_bin(path, (size, size)), np.stack(rgbs), issame


def _manual_embeddings(model: _LeftHalfLinear, rgbs: np.ndarray) -> np.ndarray:
    x = (rgbs.astype(np.float64).transpose(0, 3, 1, 2) / 255 - 0.5) / 0.5
    return x[..., : model.size // 2].reshape(len(x), -1) @ model.weight.detach().double().numpy().T


# a partial last batch; an exact fit; a batch larger than the whole set
@pytest.mark.parametrize("batch_size", [3, 10, 64])
def test_test_with_linear_backbone(tmp_path, batch_size):
    data_set, rgbs, issame = _left_same_set(tmp_path, pairs=5)
    model = _LeftHalfLinear(8)
    model.train()
    acc1, std1, acc2, std2, xnorm, embeddings_list = ver.test(data_set, model,
                                                              batch_size=batch_size, nfolds=5)
    assert model.training and model.modes and not any(model.modes)  # ran in eval, mode restored

    plain = _manual_embeddings(model, rgbs)
    mirrored = _manual_embeddings(model, rgbs[:, :, ::-1])
    assert [e.dtype for e in embeddings_list] == [np.float64, np.float64]
    np.testing.assert_allclose(embeddings_list[0], plain, rtol=1e-5, atol=1e-3)
    np.testing.assert_allclose(embeddings_list[1], mirrored, rtol=1e-5, atol=1e-3)
    norms = np.r_[np.linalg.norm(plain, axis=1), np.linalg.norm(mirrored, axis=1)]
    assert xnorm == pytest.approx(norms.mean(), rel=1e-6)
    # the model sees only the left half, which same pairs share: without flip every pair is right
    assert (acc1, std1) == (1.0, 0.0)
    flip_embeddings = sklearn.preprocessing.normalize(plain + mirrored)
    _, _, accuracy, _, _, _ = ver.evaluate(flip_embeddings, issame, 5)
    assert (acc2, std2) == pytest.approx((np.mean(accuracy), np.std(accuracy)))


def test_test_batch_size_independent_and_amp(tmp_path):
    data_set, _, _ = _left_same_set(tmp_path, pairs=10)
    model = _LeftHalfLinear(8)
    reference = ver.test(data_set, model, batch_size=1, nfolds=10)
    for batch_size in (7, 20, 64):
        result = ver.test(data_set, model, batch_size=batch_size, nfolds=10, device="cpu")
        assert result[:4] == reference[:4]
        np.testing.assert_allclose(result[5][0], reference[5][0], rtol=1e-5, atol=1e-3)
    acc1, _, _, _, xnorm, _ = ver.test(data_set, model, batch_size=4, nfolds=10, amp=True)
    assert acc1 == 1.0 and xnorm == pytest.approx(reference[4], rel=2e-2)
    # float data sets (insightface's own load_bin made float tensors) give the same, untouched
    floats = [t.float() for t in data_set[0]]
    copies = [t.clone() for t in floats]
    result = ver.test((floats, data_set[1]), model, batch_size=1, nfolds=10)
    assert result[:5] == reference[:5]
    assert all(torch.equal(a, b) for a, b in zip(floats, copies))


def _insightface_float_bin(rgbs: np.ndarray) -> list[torch.Tensor]:
    """insightface's load_bin: float32 (N, 3, H, W) tensors of the 0-255 pixels and of their mirrors."""
    data = torch.from_numpy(np.ascontiguousarray(rgbs.transpose(0, 3, 1, 2))).float()
    return [data, torch.flip(data, dims=[3])]


@torch.no_grad()
def _insightface_embeddings(data: torch.Tensor, backbone: torch.nn.Module, batch_size: int) -> np.ndarray:
    """insightface's test() loop: host-normalised float32 batches (a last short batch re-uses the tail)."""
    embeddings = None
    for ba in range(0, data.shape[0], batch_size):
        bb = min(ba + batch_size, data.shape[0])
        img = ((data[bb - batch_size:bb] / 255) - 0.5) / 0.5
        out = backbone(img).detach().cpu().numpy()
        if embeddings is None:
            embeddings = np.zeros((data.shape[0], out.shape[1]))
        embeddings[ba:bb, :] = out[(batch_size - (bb - ba)):, :]
    return embeddings


def test_uint8_bins_give_the_float_paths_embeddings(tmp_path):
    from backbones import get_backbone

    rng = np.random.default_rng(3)
    rgbs = rng.integers(0, 256, size=(16, 112, 112, 3), dtype=np.uint8)
    issame = [True, False] * 4
    path = _write(tmp_path, "set.bin", _py2_bin([_png(r) for r in rgbs], issame))
    data_set = ver.load_bin(path)
    assert [(t.dtype, tuple(t.shape)) for t in data_set[0]] == [(torch.uint8, (16, 3, 112, 112))] * 2
    assert data_set[0][0].untyped_storage().nbytes() == 16 * 3 * 112 * 112  # a quarter of float32's
    torch.manual_seed(0)
    backbone = get_backbone("iresnet18", width=8, num_features=32).eval()
    floats = _insightface_float_bin(rgbs)
    _, _, acc2, std2, xnorm, embeddings = ver.test(data_set, backbone, batch_size=8, nfolds=2)
    reference = [_insightface_embeddings(d, backbone, 8) for d in floats]
    for ours, theirs in zip(embeddings, reference):
        assert np.array_equal(ours, theirs)  # bit for bit: the same float32 inputs, the same batches
    flip = sklearn.preprocessing.normalize(reference[0] + reference[1])
    _, _, accuracy, _, _, _ = ver.evaluate(flip, issame, nrof_folds=2)
    assert (acc2, std2) == (np.mean(accuracy), np.std(accuracy))
    assert xnorm == pytest.approx(np.mean([np.linalg.norm(e) for r in reference for e in r]), rel=1e-12)
