"""Write a copy of a training ``.rec`` with its images in a seeded random order.

    python -m tools.shuffle_rec data/faces_emore data/faces_emore_shuffled --seed 0

insightface's identity records give each class one ``[start, end)`` range of keys, so they only
describe files whose classes are contiguous. A shuffled file therefore has no header and no
identity records: it is a *plain* indexed file whose keys 0..N-1 are all images, in the new
order, which ``utils.dataset.MXFaceDataset`` reads as well. Each record keeps its payload and
label bytes; its ``IRHeader.id`` becomes the new key (so ``tools.rec2idx`` rebuilds the same
index) and ``id2`` the key it had in the source, for provenance. ``property`` is carried over
(or written from the identity records / largest label when the source has none).

Reading a shuffled file in order gives sequential disk reads with class-mixed batches, which
helps on slow disks; the random order is fixed by ``--seed``.
"""

from __future__ import annotations

import argparse
import logging
import os

import numpy as np
from tqdm import tqdm

from utils.cli import run_cli
from utils.dataset import read_property, read_rec_layout
from utils.fileio import atomic_path, atomic_write_bytes, refuse_overwrite
from utils.recordio import MXIndexedRecordIO, RecordIOError, pack, unpack

logger = logging.getLogger(__name__)


def shuffle_rec(
    src_dir: str | os.PathLike,
    dst_dir: str | os.PathLike,
    seed: int = 0,
    force: bool = False,
    progress: bool = True,
) -> int:
    """Write dst_dir/train.rec, train.idx, property: the images of ``src_dir`` shuffled."""
    src_dir, dst_dir = os.fspath(src_dir), os.fspath(dst_dir)
    src_rec, src_idx = os.path.join(src_dir, "train.rec"), os.path.join(src_dir, "train.idx")
    for path in (src_rec, src_idx):
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path}: not found (expected train.rec and train.idx in {src_dir})"
            )
    outputs = [os.path.join(dst_dir, n) for n in ("train.rec", "train.idx", "property")]
    refuse_overwrite(outputs, force)
    os.makedirs(dst_dir, exist_ok=True)

    src = MXIndexedRecordIO(src_idx, src_rec, "r")
    keys, header0 = read_rec_layout(src)
    prop = read_property(src_dir)
    order = keys[np.random.default_rng(seed).permutation(len(keys))]
    max_label = -1
    # temporary files renamed at the end; dst_dir may even be src_dir (with --force): the
    # source stays readable through its open descriptor until the rename
    with atomic_path(outputs[0]) as tmp_rec, atomic_path(outputs[1]) as tmp_idx:
        dst = MXIndexedRecordIO(tmp_idx, tmp_rec, "w")
        try:
            bar = tqdm(order, unit="img", desc="shuffle", disable=not progress)
            for new_key, old_key in enumerate(bar):
                try:
                    header, payload = unpack(src.read_idx(int(old_key)))
                except RecordIOError as e:
                    raise RecordIOError(f"{e} [key {int(old_key)}]") from e
                label = header.label if header.flag == 0 else header.label[0]
                max_label = max(max_label, int(label))
                dst.write_idx(new_key, pack(header._replace(id=new_key, id2=int(old_key)), payload))
        finally:
            dst.close()
            src.close()
    if prop is not None:
        num_classes, h, w = prop
    else:
        identities = header0[1] - header0[0] if header0 else 0
        num_classes, h, w = identities or max_label + 1, 112, 112
    atomic_write_bytes(outputs[2], f"{num_classes},{h},{w}".encode())
    logger.info("%s: %d images in a random order (seed %d)", outputs[0], len(order), seed)
    return len(order)


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.shuffle_rec",
        description="Copy train.rec/train.idx with the images in a seeded random order "
                    "(a plain indexed file: keys 0..N-1, no header or identity records).",
    )
    parser.add_argument("src_dir", help="folder with train.rec, train.idx (and property)")
    parser.add_argument("dst_dir", help="folder to write the shuffled train.rec, train.idx, property")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument("--force", action="store_true", help="overwrite existing output files")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    n = shuffle_rec(args.src_dir, args.dst_dir, args.seed, args.force, progress=not args.quiet)
    print(f"wrote {n} shuffled images to {args.dst_dir}")
    return 0


if __name__ == "__main__":
    run_cli(main, extra=(ValueError,))  # every ValueError here is about the input files
