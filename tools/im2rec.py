"""Pack an image-folder tree (or an image list) into insightface's train.rec/train.idx/property.

    python -m tools.im2rec data/casia_aligned data/casia_rec              # one folder per identity
    python -m tools.im2rec data/list.lst data/out --resize --workers 8
    python -m tools.im2rec data/faces data/out --format png                # lossless

Layout written (what insightface's ``face2rec2.py`` and ``MXFaceDataset`` use): key 0 is a
header record with the array label ``[N + 1, N + 1 + C]`` and no payload; keys 1..N are the
images, class by class (class ids 0..C-1 are the sorted identity folder names), each with its
class id as a float label; keys N+1..N+C are one identity record per class with the array
label ``[start, end)`` of its image keys. ``property`` holds ``C,H,W``.

Images are decoded, checked to be ``--image-size`` square (or resized with ``--resize``) and
encoded as JPEG quality 95 (``--format png`` for lossless). ``--keep-jpeg`` copies the bytes of
JPEG files that already have the right size.

A ``.lst`` input has one image per line, tab-separated: ``path<TAB>label``, insightface's
``aligned<TAB>path<TAB>label`` or mxnet's ``index<TAB>label<TAB>path``; relative paths are
relative to the list's folder, labels must be 0..C-1.
"""

from __future__ import annotations

import argparse
import functools
import logging
import multiprocessing
import os
from typing import Iterable, Iterator

import cv2
import numpy as np
from tqdm import tqdm

from utils.cli import run_cli
from utils.dataset import list_image_folder
from utils.fileio import atomic_path, atomic_write_bytes, refuse_overwrite
from utils.images import ENCODINGS, encode_face
from utils.recordio import IRHeader, MXIndexedRecordIO, pack

logger = logging.getLogger(__name__)


def _int_label(text: str) -> int | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def read_lst(path: str | os.PathLike) -> tuple[list[str], list[int]]:
    """Image paths and labels of a ``.lst`` file (see the module docstring for the formats)."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    paths, labels = [], []
    with open(path) as f:
        for lineno, line in enumerate(f, 1):
            fields = line.rstrip("\r\n").split("\t")
            if fields == [""]:
                continue
            if len(fields) == 2:
                img, label = fields[0], _int_label(fields[1])
            elif len(fields) == 3 and _int_label(fields[2]) is not None:
                img, label = fields[1], _int_label(fields[2])  # insightface: aligned, path, label
            elif len(fields) == 3:
                img, label = fields[2], _int_label(fields[1])  # mxnet: index, label, path
            else:
                label = None
            if label is None:
                raise ValueError(
                    f"{path}: line {lineno}: expected 'path<TAB>label', 'aligned<TAB>path<TAB>label' "
                    f"or 'index<TAB>label<TAB>path' with an integer label, found {line.rstrip()!r}"
                )
            paths.append(img if os.path.isabs(img) else os.path.join(base, img))
            labels.append(label)
    if not paths:
        raise ValueError(f"{path}: the list has no images")
    # identity ranges need each class contiguous; a stable sort keeps the order within a class
    order = sorted(range(len(paths)), key=labels.__getitem__)
    paths, labels = [paths[i] for i in order], [labels[i] for i in order]
    present = set(labels)
    missing = next((c for c in range(labels[-1] + 1) if c not in present), None)
    if labels[0] < 0 or missing is not None:
        bad = labels[0] if labels[0] < 0 else missing
        raise ValueError(f"{path}: labels must be 0..C-1 with every class present; label {bad} is "
                         f"{'negative' if bad < 0 else 'missing'}")
    return paths, labels


def encode_image(
    path: str, image_size: int = 112, resize: bool = False, fmt: str = "jpg",
    quality: int = 95, keep_jpeg: bool = False,
) -> bytes:
    """The bytes to store for the image at ``path``: decoded, size-checked, re-encoded."""
    keep = ("jpg",) if keep_jpeg and fmt == "jpg" else ()
    return encode_face(path, (image_size, image_size), resize, fmt, quality, keep)


def _encoded(paths: list[str], workers: int, encode) -> Iterator[bytes]:
    if workers <= 1:
        yield from map(encode, paths)
        return
    # imap keeps the input order, so the file is the same whatever the number of workers
    # one OpenCV thread per process: the processes already use the cores
    # spawn, not fork: forking a process that already runs threads can deadlock the children
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(workers, initializer=cv2.setNumThreads, initargs=(1,)) as pool:
        yield from pool.imap(encode, paths, chunksize=16)


def write_rec(
    out_dir: str | os.PathLike,
    paths: list[str],
    labels: list[int],
    image_size: int = 112,
    workers: int = 1,
    force: bool = False,
    progress: bool = True,
    **encode_kw,
) -> tuple[int, int]:
    """Write train.rec/train.idx/property for class-sorted images; return (images, classes)."""
    if any(b < a for a, b in zip(labels, labels[1:])):
        raise ValueError("labels must be sorted so that each class's images are contiguous")
    out_dir = os.fspath(out_dir)
    rec, idx, prop = (os.path.join(out_dir, n) for n in ("train.rec", "train.idx", "property"))
    refuse_overwrite([rec, idx, prop], force)
    os.makedirs(out_dir, exist_ok=True)
    n, c = len(paths), labels[-1] + 1
    encode = functools.partial(encode_image, image_size=image_size, **encode_kw)
    starts = np.searchsorted(labels, np.arange(c + 1)) + 1  # image key range of each class

    # temporary files renamed at the end: a bad image half-way leaves no (or the old) output
    with atomic_path(rec) as tmp_rec, atomic_path(idx) as tmp_idx:
        writer = MXIndexedRecordIO(tmp_idx, tmp_rec, "w")
        try:
            writer.write_idx(0, pack(IRHeader(0, [n + 1, n + 1 + c], 0, 0), b""))
            stream = tqdm(_encoded(paths, workers, encode), total=n, unit="img",
                          desc="im2rec", disable=not progress)
            for key, (label, payload) in enumerate(zip(labels, stream), 1):
                writer.write_idx(key, pack(IRHeader(0, float(label), key, 0), payload))
            for cls in range(c):
                key = n + 1 + cls
                span = [starts[cls], starts[cls + 1]]
                writer.write_idx(key, pack(IRHeader(0, span, key, 0), b""))
        finally:
            writer.close()
    atomic_write_bytes(prop, f"{c},{image_size},{image_size}".encode())
    logger.info("%s: %d images of %d identities", rec, n, c)
    return n, c


def im2rec(src: str | os.PathLike, out_dir: str | os.PathLike, **kw) -> tuple[int, int]:
    """Pack an image-folder tree or a ``.lst`` file into ``out_dir``; return (images, classes)."""
    src = os.fspath(src)
    if os.path.isdir(src):
        paths, labels, _ = list_image_folder(src)
    elif os.path.isfile(src):
        paths, labels = read_lst(src)
    else:
        raise FileNotFoundError(f"{src}: no such image folder or .lst file")
    return write_rec(out_dir, paths, labels, **kw)


def main(argv: Iterable[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.im2rec",
        description="Pack a folder of identity sub-folders (or a .lst list) into insightface's "
                    "train.rec / train.idx / property.",
    )
    parser.add_argument("src", help="image folder (one sub-folder per identity) or .lst file")
    parser.add_argument("out_dir", help="folder to write train.rec, train.idx and property into")
    parser.add_argument("--image-size", type=int, default=112, help="square image side (default 112)")
    parser.add_argument("--resize", action="store_true", help="resize images of another size")
    parser.add_argument("--format", choices=sorted(ENCODINGS), default="jpg",
                        help="stored encoding: jpg (default) or png (lossless)")
    parser.add_argument("--quality", type=int, default=95, help="JPEG quality (default 95)")
    parser.add_argument("--keep-jpeg", action="store_true",
                        help="store JPEG files of the right size as they are, not re-encoded")
    parser.add_argument("--workers", type=int, default=1, help="encoding processes (default 1)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n, c = im2rec(
        args.src, args.out_dir, image_size=args.image_size, workers=args.workers,
        force=args.force, progress=not args.quiet, resize=args.resize, fmt=args.format,
        quality=args.quality, keep_jpeg=args.keep_jpeg,
    )
    print(f"wrote {n} images of {c} identities to {args.out_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main, extra=(ValueError,))  # every ValueError here is about an input image or list
