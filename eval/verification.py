"""Pair verification on .bin sets (LFW, CFP-FP, AgeDB-30, CALFW, CPLFW): loading, 10-fold protocol.

The numbers are insightface's (arcface_torch/eval/verification.py, as copied by ElasticFace and
ContraFace): squared L2 distance between the two embeddings of a pair, best threshold on the
training folds, accuracy on the held-out fold, VAL@FAR=1e-3 by interpolating the training FAR curve.
Differences from it:

* ``load_bin`` uses a restricted unpickler (utils.safe_pickle: a downloaded .bin must never run
  code) and returns uint8 images; ``load_pairs`` gives them without the mirrored copy.
* the FAR->threshold interpolation does not crash on repeated FAR values (interpolate_threshold).
* ``calculate_roc`` / ``calculate_val`` count with ``np.searchsorted``, not a loop over thresholds.
* embedding goes through eval.embedder (the one path of every evaluation: flip test, AMP policy);
  ``verify`` embeds a set and ``verify_embeddings`` scores it, for the training callback,
  eval.evaluation and ``test`` alike. ``test`` computes acc1 (without flip) for real and handles
  a last partial batch of any size.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Iterator, Sequence

import cv2
import numpy as np
import sklearn.preprocessing
import torch
from sklearn.decomposition import PCA
from sklearn.model_selection import KFold
from tqdm import tqdm

from eval.embedder import Embedder, EmbedFn, embed_faces
from utils import safe_pickle
from utils.errors import UserError

__all__ = [
    "BinFileError",
    "load_bin",
    "load_pairs",
    "evaluate",
    "calculate_roc",
    "calculate_val",
    "interpolate_threshold",
    "verify",
    "verify_embeddings",
    "test",
]

FAR_TARGET = 1e-3


class BinFileError(UserError, ValueError):
    """A verification .bin that is malformed, undecodable or unsafe to unpickle."""


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------

def _unpickle_bin(path: str) -> tuple[list[bytes], list[bool]]:
    """Safely unpickle a .bin and normalise it to (list of encoded image bytes, list of bool)."""
    try:
        with open(path, "rb") as f:
            # encoding='bytes': Python 2 str (the public files) must stay raw JPEG bytes.
            obj = safe_pickle.load(f, encoding="bytes")
    except (FileNotFoundError, IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # any unpickling failure: corrupt, truncated, or refused
        raise BinFileError(
            f"{path}: not a readable verification .bin: {type(e).__name__}: {e}") from e

    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        length = f" of length {len(obj)}" if isinstance(obj, (tuple, list)) else ""
        raise BinFileError(f"{path}: expected a pickled pair (images, issame), got "
                           f"{type(obj).__name__}{length}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple, np.ndarray)):
        raise BinFileError(f"{path}: expected (list of images, list of bool), got "
                           f"({type(bins).__name__}, {type(issame).__name__})")
    if isinstance(issame, np.ndarray) and (issame.dtype != np.dtype(bool) or issame.ndim != 1):
        raise BinFileError(
            f"{path}: issame array must be 1-D bool, got {issame.dtype} {issame.shape}")
    if len(bins) != 2 * len(issame):
        raise BinFileError(f"{path}: {len(bins)} images for {len(issame)} pairs "
                           f"(need exactly 2 images per pair)")
    images = []
    for idx, item in enumerate(bins):
        if isinstance(item, np.ndarray) and item.dtype == np.uint8:
            item = item.tobytes()  # cv2.imencode output stored as an ndarray
        if not isinstance(item, (bytes, bytearray)):
            raise BinFileError(
                f"{path}: image {idx} is {_describe(item)}, expected encoded image bytes")
        images.append(bytes(item))
    flags = []
    for idx, flag in enumerate(issame):
        # bool / numpy bool; 0 and 1 are accepted as the same thing, nothing else is.
        if isinstance(flag, (bool, np.bool_)) or (type(flag) is int and flag in (0, 1)):
            flags.append(bool(flag))
        else:
            raise BinFileError(f"{path}: issame[{idx}] is {_describe(flag)}, expected a bool")
    return images, flags


def _describe(item: Any) -> str:
    if isinstance(item, np.ndarray):
        return f"a numpy {item.dtype} array"
    return f"a {type(item).__name__} ({item!r:.40})"


def _decode(path: str, idx: int, raw: bytes, image_size: tuple[int, int]) -> np.ndarray:
    """Decode one encoded image to HxWx3 BGR uint8 at ``image_size``."""
    img = cv2.imdecode(np.frombuffer(raw, dtype=np.uint8), cv2.IMREAD_COLOR)
    if img is None:
        raise BinFileError(f"{path}: image {idx} (pair {idx // 2}) cannot be decoded "
                           f"({len(raw)} bytes starting {raw[:8].hex()})")
    height, width = image_size
    if img.shape[:2] != (height, width):
        # insightface resizes the short side (mx.image.resize_short, bicubic); only a same-aspect
        # image ends up at image_size that way, anything else would not fit the batch.
        if img.shape[0] * width != img.shape[1] * height:
            raise BinFileError(
                f"{path}: image {idx} (pair {idx // 2}) is {img.shape[1]}x{img.shape[0]}, "
                f"cannot be resized to {width}x{height} without changing its aspect")
        img = cv2.resize(img, (width, height), interpolation=cv2.INTER_CUBIC)
    return img


def load_pairs(path: str | os.PathLike, image_size: Sequence[int] = (112, 112), *,
               progress: bool = False, workers: int | None = None) -> tuple[torch.Tensor, list[bool]]:
    """Load a verification .bin as (uint8 (2P, 3, H, W) RGB images, issame list of P bools)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"verification bin not found: {path}")
    height, width = int(image_size[0]), int(image_size[1])
    bins, issame = _unpickle_bin(path)
    images = np.empty((len(bins), 3, height, width), dtype=np.uint8)

    def decode_into(idx: int) -> None:
        bgr = _decode(path, idx, bins[idx], (height, width))
        images[idx] = cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)  # HWC BGR -> CHW RGB

    # cv2.imdecode releases the GIL: threads decode in parallel (5 bins x 12000 images at start-up)
    workers = workers or min(8, os.cpu_count() or 1)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for _ in tqdm(pool.map(decode_into, range(len(bins))), total=len(bins),
                      desc=f"loading {os.path.basename(path)}", disable=not progress):
            pass
    return torch.from_numpy(images), issame


def load_bin(path: str | os.PathLike, image_size: Sequence[int] = (112, 112), *,
             progress: bool = False, workers: int | None = None
             ) -> tuple[list[torch.Tensor], list[bool]]:
    """Load a verification .bin as ([images, flipped images] uint8 (2P,3,H,W) RGB, issame list).

    insightface's layout. The evaluation itself mirrors batch by batch (eval.embedder.mirror):
    :func:`load_pairs` gives the same set without the mirrored copy (half the memory).
    """
    images, issame = load_pairs(path, image_size, progress=progress, workers=workers)
    return [images, torch.flip(images, dims=[3])], issame


# --------------------------------------------------------------------------------------------------
# Protocol
# --------------------------------------------------------------------------------------------------

def _folds(nrof_pairs: int, nrof_folds: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """insightface's LFold: KFold without shuffling; one fold means train == test == everything."""
    indices = np.arange(nrof_pairs)
    if nrof_folds > 1:
        yield from KFold(n_splits=nrof_folds, shuffle=False).split(indices)
    else:
        yield indices, indices


def _squared_distance(embeddings1: np.ndarray, embeddings2: np.ndarray) -> np.ndarray:
    # Same arithmetic (and dtype) as insightface, so thresholds cut the same pairs.
    return np.sum(np.square(np.subtract(embeddings1, embeddings2)), 1)


def _accept_counts(dist: np.ndarray, issame: np.ndarray,
                   thresholds: np.ndarray) -> tuple[np.ndarray, np.ndarray, int, int]:
    """Per threshold t: (#same with dist < t, #different with dist < t, #same, #different).

    Sorting once and binary-searching every threshold gives exactly the counts of the per-threshold
    np.less loop (NaN distances sort last and are never below a threshold, as with np.less).
    """
    dist = np.asarray(dist, dtype=np.float64)
    same = np.sort(dist[issame])
    diff = np.sort(dist[~issame])
    thresholds = np.asarray(thresholds, dtype=np.float64)
    return (np.searchsorted(same, thresholds, side="left"),
            np.searchsorted(diff, thresholds, side="left"), len(same), len(diff))


def _roc_from_counts(tp: np.ndarray, fp: np.ndarray, n_same: int, n_diff: int
                     ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """tpr, fpr, accuracy per threshold, with insightface's 0-when-undefined convention."""
    tpr = tp / n_same if n_same else np.zeros(len(tp))
    fpr = fp / n_diff if n_diff else np.zeros(len(fp))
    acc = (tp + (n_diff - fp)) / (n_same + n_diff)
    return tpr, fpr, acc


def calculate_roc(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                  actual_issame: np.ndarray, nrof_folds: int = 10, pca: int = 0
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean TPR/FPR per threshold over folds, and per-fold accuracy at the train folds' best."""
    thresholds = np.asarray(thresholds)
    actual_issame = np.asarray(actual_issame, dtype=bool)
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    tprs = np.zeros((nrof_folds, len(thresholds)))
    fprs = np.zeros((nrof_folds, len(thresholds)))
    accuracy = np.zeros(nrof_folds)
    dist = _squared_distance(embeddings1, embeddings2) if pca == 0 else None
    for fold_idx, (train_set, test_set) in enumerate(_folds(nrof_pairs, nrof_folds)):
        if pca > 0:
            # as insightface: PCA fitted on this fold's training embeddings, then re-normalised
            model = PCA(n_components=pca).fit(
                np.concatenate((embeddings1[train_set], embeddings2[train_set]), axis=0))
            dist = _squared_distance(sklearn.preprocessing.normalize(model.transform(embeddings1)),
                                     sklearn.preprocessing.normalize(model.transform(embeddings2)))
        _, _, acc_train = _roc_from_counts(
            *_accept_counts(dist[train_set], actual_issame[train_set], thresholds))
        best = int(np.argmax(acc_train))  # first best, as np.argmax in insightface
        tprs[fold_idx], fprs[fold_idx], acc_test = _roc_from_counts(
            *_accept_counts(dist[test_set], actual_issame[test_set], thresholds))
        accuracy[fold_idx] = acc_test[best]
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy


def interpolate_threshold(far: np.ndarray, thresholds: np.ndarray, far_target: float) -> float:
    """Threshold at ``far_target`` on a FAR curve, as insightface's interp1d(far, thr, 'slinear').

    SciPy <= 1.9 built that interpolant as a degree-1 B-spline on x = far (stably sorted) with
    knots [x0, x0..x_{n-1}, x_{n-1}] and accepted repeated x; SciPy >= 1.10 raises "Expect x to not
    have duplicates" (scipy PR 16780), which a FAR curve sampled on a fine threshold grid nearly
    always has. Evaluating that spline at far_target interpolates linearly between the LAST point
    whose FAR is <= far_target and the FIRST point whose FAR is > far_target (the knot interval
    holding it): for each distinct FAR value, its largest threshold is used on its left and its
    smallest on its right. This does that with the same floating-point steps as SciPy's de Boor
    evaluation, so the threshold is bit-identical to SciPy wherever SciPy runs (any version without
    repeats; SciPy <= 1.9 with repeats).
    Edge cases insightface never reaches (its thresholds start at 0, where FAR is 0): far_target
    equal to the maximum FAR gives the threshold of the last such point (old SciPy gave 0.0 when
    that maximum was repeated: a zero-length knot interval); far_target below every FAR gives the
    first threshold (interp1d raised a bounds error).
    """
    far = np.asarray(far, dtype=np.float64)
    thresholds = np.asarray(thresholds, dtype=np.float64)
    order = np.argsort(far, kind="mergesort")  # interp1d's stable sort: ties keep threshold order
    x, y = far[order], thresholds[order]
    hi = int(np.searchsorted(x, far_target, side="right"))
    if hi == 0:
        return float(y[0])
    if hi == len(x):
        return float(y[-1])
    lo = hi - 1
    xa, xb = x[lo], x[hi]
    w = 1.0 / (xb - xa)
    return float(y[lo] * (w * (xb - far_target)) + y[hi] * (w * (far_target - xa)))


def calculate_val(thresholds: np.ndarray, embeddings1: np.ndarray, embeddings2: np.ndarray,
                  actual_issame: np.ndarray, far_target: float = FAR_TARGET, nrof_folds: int = 10
                  ) -> tuple[float, float, float]:
    """VAL (TAR) at the train-fold threshold for ``far_target``: (mean VAL, std VAL, mean FAR)."""
    thresholds = np.asarray(thresholds)
    actual_issame = np.asarray(actual_issame, dtype=bool)
    nrof_pairs = min(len(actual_issame), embeddings1.shape[0])
    val = np.zeros(nrof_folds)
    far = np.zeros(nrof_folds)
    dist = _squared_distance(embeddings1, embeddings2)
    for fold_idx, (train_set, test_set) in enumerate(_folds(nrof_pairs, nrof_folds)):
        _, fa, _, n_diff = _accept_counts(dist[train_set], actual_issame[train_set], thresholds)
        far_train = fa / n_diff if n_diff else np.zeros(len(fa))
        if np.max(far_train) >= far_target:
            threshold = interpolate_threshold(far_train, thresholds, far_target)
        else:
            threshold = 0.0
        ta, fa, n_same, n_diff = _accept_counts(dist[test_set], actual_issame[test_set],
                                                np.array([threshold]))
        # insightface divides by zero here (a fold without same or without different pairs)
        val[fold_idx] = ta[0] / n_same if n_same else 0.0
        far[fold_idx] = fa[0] / n_diff if n_diff else 0.0
    return float(np.mean(val)), float(np.std(val)), float(np.mean(far))


def evaluate(embeddings: np.ndarray, actual_issame: Sequence[bool], nrof_folds: int = 10,
             pca: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float, float]:
    """insightface's protocol on interleaved pair embeddings: (tpr, fpr, acc, val, val_std, far)."""
    embeddings = np.asarray(embeddings)
    actual_issame = np.asarray(actual_issame, dtype=bool)
    if embeddings.ndim != 2 or embeddings.shape[0] != 2 * len(actual_issame):
        raise ValueError(f"evaluate: expected 2 embeddings per pair ({2 * len(actual_issame)} rows "
                         f"for {len(actual_issame)} pairs), got shape {embeddings.shape}")
    if nrof_folds < 1 or (nrof_folds > 1 and len(actual_issame) < nrof_folds):
        raise ValueError(
            f"evaluate: cannot split {len(actual_issame)} pairs into {nrof_folds} folds")
    embeddings1, embeddings2 = embeddings[0::2], embeddings[1::2]
    tpr, fpr, accuracy = calculate_roc(np.arange(0, 4, 0.01), embeddings1, embeddings2,
                                       actual_issame, nrof_folds=nrof_folds, pca=pca)
    val, val_std, far = calculate_val(np.arange(0, 4, 0.001), embeddings1, embeddings2,
                                      actual_issame, FAR_TARGET, nrof_folds=nrof_folds)
    return tpr, fpr, accuracy, val, val_std, far


# --------------------------------------------------------------------------------------------------
# Embedding and scoring a set
# --------------------------------------------------------------------------------------------------

def verify_embeddings(embeddings_list: Sequence[np.ndarray], issame: Sequence[bool],
                      nfolds: int = 10) -> dict[str, float]:
    """Metrics of [embeddings, mirrored embeddings]: acc1/std1 (no flip), acc2/std2 (flip), xnorm.

    insightface's arithmetic: the embeddings in float64, acc2 on the L2-normalised float64 sum of
    the two, xnorm the mean norm of all raw embeddings.
    """
    embeddings_list = [np.asarray(e, dtype=np.float64) for e in embeddings_list]
    if len(embeddings_list) != 2:
        raise ValueError(f"verify_embeddings: expected [embeddings, mirrored embeddings], got "
                         f"{len(embeddings_list)} arrays")
    xnorm = float(np.mean(np.concatenate([np.linalg.norm(e, axis=1) for e in embeddings_list])))
    plain = sklearn.preprocessing.normalize(embeddings_list[0])
    _, _, accuracy, _, _, _ = evaluate(plain, issame, nrof_folds=nfolds)
    acc1, std1 = float(np.mean(accuracy)), float(np.std(accuracy))
    flip = sklearn.preprocessing.normalize(embeddings_list[0] + embeddings_list[1])
    _, _, accuracy, _, _, _ = evaluate(flip, issame, nrof_folds=nfolds)
    acc2, std2 = float(np.mean(accuracy)), float(np.std(accuracy))
    return {"acc1": acc1, "std1": std1, "acc2": acc2, "std2": std2, "xnorm": xnorm}


def verify(embed: EmbedFn, images: torch.Tensor, issame: Sequence[bool], nfolds: int = 10,
           batch_size: int = 128, progress: bool = False
           ) -> tuple[dict[str, float], list[np.ndarray]]:
    """Embed one set (``load_pairs``' images) with the flip test and score it.

    Returns (:func:`verify_embeddings`' metrics, [embeddings, mirrored embeddings] float32).
    Plain slices of ``batch_size``: a short last batch is simply smaller (insightface re-used the
    tail of the previous batch, which breaks when the set is smaller than one batch).
    """
    if batch_size < 1:
        raise ValueError(f"verify: batch_size must be >= 1, got {batch_size}")
    if len(images) == 0:
        raise ValueError("verify: the verification set holds no images")
    embs, embs_flip = embed_faces(embed, images.split(batch_size), len(images), flip=True,
                                  desc="embedding" if progress else None)
    return verify_embeddings([embs, embs_flip], issame, nfolds), [embs, embs_flip]


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def _uint8_images(data: torch.Tensor) -> torch.Tensor:
    """uint8 images; insightface's float32 tensors of 0-255 pixels are converted (exactly)."""
    if data.dtype == torch.uint8:
        return data
    pixels = data.to(torch.uint8)
    if not data.is_floating_point() or not torch.equal(pixels.to(data.dtype), data):
        raise TypeError(f"test: expected uint8 images (or insightface's float tensors of 0-255 "
                        f"integer pixel values), got {data.dtype} images that are neither")
    return pixels


def test(data_set: tuple[Sequence[torch.Tensor], Sequence[bool]], backbone: torch.nn.Module,
         batch_size: int = 64, nfolds: int = 10, device: str | torch.device | None = None,
         amp: bool = False, progress: bool = False
         ) -> tuple[float, float, float, float, float, list[np.ndarray]]:
    """Verify a loaded .bin with ``backbone``: (acc1, std1, acc2, std2, xnorm, embeddings_list).

    acc1/std1 use the embeddings of the images, acc2/std2 the sum of the embeddings of an image and
    of its mirror (insightface's reported "Accuracy-Flip"); xnorm is the mean norm of all raw
    embeddings (float64, as insightface). ``data_set`` is load_bin's ([images, mirrored images],
    issame); the mirrors are made batch by batch by the embedder (the one flip test), so the
    second tensor is not read. The backbone runs in eval mode and is given back in the mode it
    came in. ``amp``: eval.embedder's policy (CUDA only).
    """
    data_list, issame_list = data_set
    if len(data_list) != 2:
        raise ValueError(f"test: expected [images, flipped images], got {len(data_list)} tensors")
    if batch_size < 1:
        raise ValueError(f"test: batch_size must be >= 1, got {batch_size}")
    device = torch.device(device) if device is not None else _module_device(backbone)
    images = _uint8_images(data_list[0])
    embedder = Embedder.from_module(backbone, device=device, batch_size=batch_size, amp=amp,
                                    image_size=tuple(images.shape[2:]))
    metrics, embeddings_list = verify(embedder, images, issame_list, nfolds, batch_size, progress)
    return (metrics["acc1"], metrics["std1"], metrics["acc2"], metrics["std2"], metrics["xnorm"],
            [e.astype(np.float64) for e in embeddings_list])


test.__test__ = False  # a library function named test: keep pytest from collecting it when imported
