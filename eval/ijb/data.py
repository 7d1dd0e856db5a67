"""IJB-B / IJB-C release as insightface distributes it: meta readers and an aligning Dataset.

Layout (``root/IJBC`` or ``root/IJBB``; prefix ``ijbc`` / ``ijbb``)::

    meta/<p>_face_tid_mid.txt          image_name template_id media_id
    meta/<p>_template_pair_label.txt   template_1 template_2 label
    meta/<p>_name_5pts_score.txt       image_name x1 y1 ... x5 y5 detector_score
    meta/<p>_1N_gallery_{G1,G2}.csv    IJB-C 1:N galleries (IJB-B: _S1, _S2); header row, then
    meta/<p>_1N_probe_mixed.csv        TEMPLATE_ID,SUBJECT_ID,FILENAME,... one row per image
    loose_crop/<image_name>

Rows of ``face_tid_mid`` and ``name_5pts_score`` describe the same images in the same order
(insightface relies on it silently; we check the names).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass

import numpy as np

from eval.faces import AlignedFaces
from utils.errors import UserError

TARGETS = ("IJBC", "IJBB")
# 1:N gallery file suffixes per target (insightface's ijb_1n.py names)
GALLERIES = {"IJBC": ("G1", "G2"), "IJBB": ("S1", "S2")}


class IJBFormatError(UserError, ValueError):
    """A meta file does not follow the IJB release format."""


@dataclass(frozen=True)
class IJBPaths:
    """Paths of one IJB release (``root`` is the IJBC/IJBB folder itself)."""

    root: str
    target: str

    @property
    def prefix(self) -> str:
        return self.target.lower()

    def meta(self, suffix: str) -> str:
        return os.path.join(self.root, "meta", f"{self.prefix}_{suffix}")

    @property
    def face_tid_mid(self) -> str:
        return self.meta("face_tid_mid.txt")

    @property
    def pair_label(self) -> str:
        return self.meta("template_pair_label.txt")

    @property
    def name_5pts_score(self) -> str:
        return self.meta("name_5pts_score.txt")

    @property
    def image_dir(self) -> str:
        return os.path.join(self.root, "loose_crop")

    @property
    def galleries(self) -> dict[str, str]:
        return {g: self.meta(f"1N_gallery_{g}.csv") for g in GALLERIES[self.target]}

    @property
    def probe_mixed(self) -> str:
        return self.meta("1N_probe_mixed.csv")


def resolve_paths(data_root: str, target: str) -> IJBPaths:
    """Find the IJB folder: ``data_root/<target>`` or ``data_root`` itself if it holds the meta."""
    target = target.upper()
    if target not in TARGETS:
        raise ValueError(f"unknown IJB target '{target}'; known: {', '.join(TARGETS)}")
    for root in (os.path.join(data_root, target), data_root):
        paths = IJBPaths(root, target)
        if os.path.isfile(paths.face_tid_mid):
            return paths
    raise FileNotFoundError(
        f"no {target} release under {data_root}: expected "
        f"{IJBPaths(os.path.join(data_root, target), target).face_tid_mid} "
        f"(or {IJBPaths(data_root, target).face_tid_mid})"
    )


def _rows(path: str, ncols: int | None = None, min_cols: int | None = None):
    """Yield (line number, whitespace-split fields) of a text meta file, checking the width."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IJB meta file not found: {path}")
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if (ncols is not None and len(fields) != ncols) or (
                min_cols is not None and len(fields) < min_cols
            ):
                want = ncols if ncols is not None else f">= {min_cols}"
                raise IJBFormatError(
                    f"{path}:{lineno}: expected {want} fields, got {len(fields)}: {line.strip()!r}"
                )
            yield lineno, fields


def _to_int(path: str, lineno: int, value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise IJBFormatError(f"{path}:{lineno}: {value!r} is not an integer") from None


def read_face_tid_mid(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``<p>_face_tid_mid.txt`` -> (image names, template ids, media ids)."""
    names, templates, medias = [], [], []
    for lineno, (name, tid, mid) in _rows(path, ncols=3):
        names.append(name)
        templates.append(_to_int(path, lineno, tid))
        medias.append(_to_int(path, lineno, mid))
    if not names:
        raise IJBFormatError(f"{path}: no rows")
    return np.array(names), np.array(templates, np.int64), np.array(medias, np.int64)


def read_template_media_list(path: str) -> tuple[np.ndarray, np.ndarray]:
    """``<p>_face_tid_mid.txt`` -> (template ids, media ids), as insightface's reader."""
    _, templates, medias = read_face_tid_mid(path)
    return templates, medias


def read_template_pair_list(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``<p>_template_pair_label.txt`` -> (t1, t2, label) int64 arrays."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IJB meta file not found: {path}")
    # IJB-C has 15.6M pairs: NumPy's C parser, not a Python loop.
    try:
        pairs = np.loadtxt(path, dtype=np.int64, ndmin=2)
    except ValueError as e:
        raise IJBFormatError(f"{path}: {e}") from None
    if pairs.shape[1] != 3 or len(pairs) == 0:
        raise IJBFormatError(f"{path}: expected rows 't1 t2 label', got shape {pairs.shape}")
    labels = np.unique(pairs[:, 2])
    if not np.isin(labels, [0, 1]).all():
        raise IJBFormatError(f"{path}: labels must be 0/1, found {labels[:10].tolist()}")
    return pairs[:, 0].copy(), pairs[:, 1].copy(), pairs[:, 2].copy()


def read_name_5pts_score(path: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``<p>_name_5pts_score.txt`` -> (names, landmarks (N, 5, 2) float32, scores (N,) float32)."""
    names, values = [], []
    for lineno, fields in _rows(path, ncols=12):
        try:
            values.append([float(v) for v in fields[1:]])
        except ValueError:
            raise IJBFormatError(
                f"{path}:{lineno}: non-numeric landmark/score in {fields}"
            ) from None
        names.append(fields[0])
    if not names:
        raise IJBFormatError(f"{path}: no rows")
    arr = np.array(values, np.float32)
    return np.array(names), arr[:, :10].reshape(-1, 5, 2), arr[:, 10].copy()


def read_template_subject_id_list(path: str) -> tuple[np.ndarray, np.ndarray]:
    """1:N CSV (header row; TEMPLATE_ID, SUBJECT_ID first) -> per-row (templates, subject ids)."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"IJB 1:N list not found: {path}")
    templates, subjects = [], []
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise IJBFormatError(f"{path}: empty file")
        if header[0].strip().upper() != "TEMPLATE_ID":
            raise IJBFormatError(f"{path}: first header column should be TEMPLATE_ID, got {header}")
        for lineno, row in enumerate(reader, 2):
            if not row:
                continue
            if len(row) < 2:
                raise IJBFormatError(
                    f"{path}:{lineno}: expected TEMPLATE_ID,SUBJECT_ID,... got {row}"
                )
            templates.append(_to_int(path, lineno, row[0]))
            subjects.append(_to_int(path, lineno, row[1]))
    return np.array(templates, np.int64), np.array(subjects, np.int64)


@dataclass
class IJBMeta:
    """Everything the 1:1 protocol needs, one row per image in release order."""

    paths: IJBPaths
    names: np.ndarray
    templates: np.ndarray
    medias: np.ndarray
    landmarks: np.ndarray
    faceness: np.ndarray
    p1: np.ndarray
    p2: np.ndarray
    label: np.ndarray


def load_meta(data_root: str, target: str) -> IJBMeta:
    """Read and cross-check the 1:1 meta files of one release."""
    paths = resolve_paths(data_root, target)
    names, templates, medias = read_face_tid_mid(paths.face_tid_mid)
    names5, landmarks, faceness = read_name_5pts_score(paths.name_5pts_score)
    if len(names5) != len(names):
        raise IJBFormatError(
            f"{paths.name_5pts_score} has {len(names5)} rows but {paths.face_tid_mid} has "
            f"{len(names)}; they must list the same images in the same order"
        )
    bad = np.flatnonzero(names5 != names)
    if len(bad):
        i = int(bad[0])
        raise IJBFormatError(
            f"row {i + 1}: {paths.name_5pts_score} names {names5[i]!r} but {paths.face_tid_mid} "
            f"names {names[i]!r} ({len(bad)} rows differ); the files must be in the same order"
        )
    p1, p2, label = read_template_pair_list(paths.pair_label)
    return IJBMeta(paths, names, templates, medias, landmarks, faceness, p1, p2, label)


@dataclass
class IJB1NMeta:
    """1:N lists: per-row template and subject ids of each gallery and of the mixed probes."""

    galleries: dict[str, tuple[np.ndarray, np.ndarray]]
    probe: tuple[np.ndarray, np.ndarray]


def load_meta_1n(paths: IJBPaths) -> IJB1NMeta:
    """Read the two gallery CSVs and the mixed-probe CSV of one release."""
    galleries = {g: read_template_subject_id_list(p) for g, p in paths.galleries.items()}
    return IJB1NMeta(galleries, read_template_subject_id_list(paths.probe_mixed))


class IJBAlignedFaces(AlignedFaces):
    """The ``loose_crop`` images of a release aligned with their 5 points (eval.faces reads them)."""

    def __init__(self, image_dir: str, names, landmarks, image_size: int = 112):
        if len(names) != len(landmarks):
            raise ValueError(f"{len(names)} names but {len(landmarks)} landmark sets")
        super().__init__([os.path.join(image_dir, name) for name in names], landmarks, image_size)
