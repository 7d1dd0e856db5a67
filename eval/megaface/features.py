"""MegaFace feature files: the devkit's binary matrix format, the feature trees, and extraction.

Binary matrix format (what insightface's ``gen_megaface.py`` / ``remove_noises.py`` write and the
devkit's ``Identification`` binary reads; an OpenCV ``Mat`` dump): a 16-byte header of four
little-endian int32 ``(rows, cols, element size in bytes, OpenCV type)`` followed by ``rows * cols``
float32 values, row-major. A feature of dimension D is stored as a column vector:
header ``(D, 1, 4, 5)`` (5 = ``CV_32FC1``), then D float32.

Extraction reads and aligns the images with eval.faces (threads ahead of the embedder) and embeds
them with eval.embedder's flip test, through eval.extract (under torchrun each rank embeds a share,
rank 0 writes); a feature is gen_megaface.py's: the L2-normalised float32 sum of the embeddings of
the image and of its mirror (the image's alone with ``flip=False``).

Feature trees mirror the image trees: the feature of ``<root>/<rel path>`` is
``<feature root>/<rel path>_<algo>.bin``
(e.g. ``facescrub/Aaron_Eckhart/Aaron_Eckhart_136.png_r100.bin``), which is how the devkit's
``run_experiment.py`` finds it (``os.path.join(dir, path + file_ending)`` with
``file_ending = "_<algo>.bin"``).
"""

from __future__ import annotations

import json
import logging
import os
import struct
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from tqdm import tqdm

from eval.extract import iter_features
from eval.faces import AlignedFaces, read_face
from utils.distributed import DistEnv, broadcast_object

from .lists import MegaFaceError

logger = logging.getLogger(__name__)

HEADER = struct.Struct("<4i")
CV_32F = 5  # OpenCV type code of CV_32FC1
FLOAT_SIZE = 4
_READ_CHUNK = 1024

# An embedder maps (N, 3, 112, 112) RGB uint8 crops to (N, D) float32 embeddings
# (eval.embedder.Embedder is one; eval.embedder.EmbedFn, not imported: it loads the networks).
EmbedFn = Callable[[torch.Tensor], np.ndarray]


# --------------------------------------------------------------------------------------------
# binary matrix format
# --------------------------------------------------------------------------------------------


def encode_bin(feature: np.ndarray) -> bytes:
    """Bytes of ``feature`` (1-D) in the devkit's matrix format: header (D, 1, 4, 5) + float32."""
    vec = np.asarray(feature, dtype="<f4").reshape(-1)
    return HEADER.pack(vec.size, 1, FLOAT_SIZE, CV_32F) + vec.tobytes()


def write_bin(path: str, feature: np.ndarray) -> None:
    """Write one feature file; a crash leaves the old file or none, never a truncated one."""
    tmp = f"{path}.tmp"
    with open(tmp, "wb") as f:
        f.write(encode_bin(feature))
    # rename is atomic; no fsync: a million features would take hours, and a lost write after a
    # power cut only means the feature is extracted again on the next run.
    os.replace(tmp, path)


def read_matrix(path: str) -> np.ndarray:
    """Read a devkit matrix file as a float32 array of shape (rows, cols)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise MegaFaceError(f"{path}: feature file not found") from None
    if len(data) < HEADER.size:
        raise MegaFaceError(f"{path}: truncated header ({len(data)} bytes, need {HEADER.size})")
    rows, cols, elem_size, cv_type = HEADER.unpack_from(data)
    if elem_size != FLOAT_SIZE or cv_type != CV_32F:
        raise MegaFaceError(
            f"{path}: not a float32 matrix (element size {elem_size}, OpenCV type {cv_type}; "
            f"expected {FLOAT_SIZE} and {CV_32F} = CV_32F)"
        )
    if rows <= 0 or cols <= 0:
        raise MegaFaceError(f"{path}: bad matrix shape {rows}x{cols} in the header")
    need = rows * cols * FLOAT_SIZE
    have = len(data) - HEADER.size
    if have != need:
        raise MegaFaceError(
            f"{path}: header says {rows}x{cols} float32 ({need} bytes of data) but the file "
            f"has {have}"
        )
    values = np.frombuffer(data, dtype="<f4", offset=HEADER.size)
    return values.reshape(rows, cols).astype(np.float32)


def read_bin(path: str) -> np.ndarray:
    """Read one feature file as a 1-D float32 vector."""
    return read_matrix(path).reshape(-1)


def feature_path(feature_root: str, rel_path: str, algo: str) -> str:
    """Where the feature of image ``rel_path`` lives: ``<feature_root>/<rel_path>_<algo>.bin``."""
    return os.path.join(feature_root, f"{rel_path}_{algo}.bin")


def load_features(
    feature_root: str, rel_paths: Sequence[str], algo: str, num_threads: int = 8, desc: str = "read"
) -> np.ndarray:
    """Read the features of ``rel_paths`` into an (N, D) float32 matrix (threads overlap I/O)."""
    paths = [feature_path(feature_root, p, algo) for p in rel_paths]
    if not paths:
        raise MegaFaceError(f"{feature_root}: no features to read")
    first = read_bin(paths[0])
    out = np.empty((len(paths), first.size), dtype=np.float32)

    def read_range(start: int) -> int:
        stop = min(start + _READ_CHUNK, len(paths))
        for i in range(start, stop):
            vec = read_bin(paths[i])
            if vec.size != first.size:
                raise MegaFaceError(
                    f"{paths[i]}: feature has dimension {vec.size}, but {paths[0]} has {first.size}"
                )
            out[i] = vec
        return stop - start

    # chunks of files per task: one future per file would cost more memory than the features
    with ThreadPoolExecutor(max(1, num_threads)) as pool, \
            tqdm(total=len(paths), desc=desc, unit="file", leave=False) as bar:
        for done in pool.map(read_range, range(0, len(paths), _READ_CHUNK)):
            bar.update(done)
    return out


def write_features(
    feature_root: str, rel_paths: Sequence[str], features: np.ndarray, algo: str
) -> None:
    """Write one feature file per row of ``features`` into the tree under ``feature_root``."""
    made: set[str] = set()
    for rel, feat in zip(tqdm(rel_paths, desc="write", unit="file", leave=False), features):
        path = feature_path(feature_root, rel, algo)
        folder = os.path.dirname(path)
        if folder not in made:
            os.makedirs(folder, exist_ok=True)
            made.add(folder)
        write_bin(path, feat)


# --------------------------------------------------------------------------------------------
# images: aligned crops, or originals aligned with a per-image landmark JSON
# --------------------------------------------------------------------------------------------


def read_landmarks_json(path: str) -> np.ndarray:
    """The 5 landmarks (5, 2) of a per-image JSON file (``<image>.json``, MegaFace's convention).

    Accepted: MegaFace-style ``{"landmarks": {"0": {"x": .., "y": ..}, ..., "4": {...}}}`` (the
    first five keys, in ArcFace order: left eye, right eye, nose tip, left and right mouth
    corners), or
    ``{"landmarks": [[x, y], ...5]}`` / a flat list of 10 numbers.
    """
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise MegaFaceError(f"{path}: not valid JSON ({e})") from None
    lmk = data.get("landmarks") if isinstance(data, dict) else None
    try:
        if isinstance(lmk, dict):
            pts = [[float(lmk[str(k)]["x"]), float(lmk[str(k)]["y"])] for k in range(5)]
        elif isinstance(lmk, list):
            pts = np.asarray(lmk, dtype=np.float64).reshape(5, 2).tolist()
        else:
            raise KeyError("landmarks")
    except (KeyError, TypeError, ValueError):
        raise MegaFaceError(
            f"{path}: no 5-point 'landmarks' entry (expected "
            "{'0': {'x': .., 'y': ..}, ..., '4': ..} or a list of 5 [x, y] pairs)"
        ) from None
    return np.asarray(pts, dtype=np.float32)


def _landmark_file(image_path: str) -> str:
    return image_path + ".json"


def _landmarks_beside(image_path: str) -> np.ndarray | None:
    """The landmarks of ``<image>.json`` beside the image, or None (an aligned crop) without one."""
    json_path = _landmark_file(image_path)
    return read_landmarks_json(json_path) if os.path.exists(json_path) else None


def load_face(image_path: str, image_size: int = 112) -> np.ndarray:
    """An aligned ``image_size`` RGB uint8 crop (S, S, 3) of ``image_path``.

    With a landmark file ``<image_path>.json`` beside the image, the image is aligned with
    eval.alignment.norm_crop; without one it must already be an aligned crop of the right size
    (insightface's ``facescrub_images`` / ``megaface_images``).
    """
    return read_face(image_path, _landmarks_beside(image_path), image_size,
                     no_landmarks=f"no landmark file {_landmark_file(image_path)} to align it with")


def face_images(root: str, rel_paths: Sequence[str], image_size: int = 112) -> AlignedFaces:
    """The images ``root/<rel path>`` as eval.faces reads them, aligned as :func:`load_face` says."""
    paths = [os.path.join(root, rel) for rel in rel_paths]
    return AlignedFaces(paths, lambda i: _landmarks_beside(paths[i]), image_size,
                        no_landmarks="no landmark file <image>.json beside it to align it with")


# --------------------------------------------------------------------------------------------
# extraction
# --------------------------------------------------------------------------------------------


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows divided by their L2 norm (zero rows stay zero, as sklearn.preprocessing.normalize)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.where(norm == 0, 1, norm)).astype(np.float32)


@dataclass
class ExtractStats:
    """How many features a call to extract_features wrote and how many it found already there."""

    total: int
    extracted: int
    skipped: int


def extract_features(
    embed: EmbedFn,
    image_root: str,
    rel_paths: Sequence[str],
    feature_root: str,
    algo: str,
    *,
    flip: bool = True,
    batch_size: int = 128,
    num_workers: int = 0,
    image_size: int = 112,
    force: bool = False,
    desc: str = "extract",
    env: DistEnv | None = None,
) -> ExtractStats:
    """Write ``<feature_root>/<rel>_<algo>.bin`` per image; existing ones are kept unless force.

    Under torchrun (``env``) every rank embeds its share of the images and rank 0 writes.
    """
    main = env is None or env.is_main
    todo = [
        i for i, rel in enumerate(rel_paths)
        if force or not os.path.exists(feature_path(feature_root, rel, algo))
    ] if main else None
    if env is not None:
        todo = broadcast_object(env, todo)  # rank 0's view of the tree: every rank the same list
    stats = ExtractStats(len(rel_paths), extracted=len(todo), skipped=len(rel_paths) - len(todo))
    logger.info("%s: %d images, %d features already in %s, %d to extract",
                desc, stats.total, stats.skipped, feature_root, stats.extracted)
    if not todo:
        return stats
    faces = face_images(image_root, [rel_paths[i] for i in todo], image_size)
    made: set[str] = set()
    blocks = iter_features(embed, faces, batch_size, flip, env, num_workers, desc)
    for done, emb, emb_flip in blocks:
        if not main:
            continue
        # gen_megaface.py: the float32 sum of the two embeddings, L2-normalised
        feats = l2_normalize(emb if emb_flip is None else emb + emb_flip)
        for index, feat in zip(todo[done : done + len(feats)], feats):
            path = feature_path(feature_root, rel_paths[index], algo)
            folder = os.path.dirname(path)
            if folder not in made:
                os.makedirs(folder, exist_ok=True)
                made.add(folder)
            write_bin(path, feat)
    return stats
