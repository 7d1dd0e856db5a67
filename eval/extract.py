"""Face sources and feature extraction on one or many processes (``torchrun``).

:func:`open_face_source` opens the faces of an evaluation set: a RecordIO folder (``train.rec``
+ ``train.idx``, read by utils.dataset.MXFaceDataset without augmentation) or an image folder
with one sub-folder per identity (aligned 112x112 crops, read by eval.faces.read_face). Item
``i`` of a :class:`FaceSource` is a (3, 112, 112) uint8 RGB tensor; ``labels``, ``names`` and
``stamp_paths`` describe the set.

:func:`extract_features` embeds any such dataset (a FaceSource, or eval.faces.AlignedFaces as
IJB and MegaFace read them) with eval.embedder's flip test, and :func:`iter_features` yields the
same features block by block. Under torchrun every rank embeds whole batches of the
one-process run (so each face is embedded in the same batch, with the same neighbours, as
without torchrun: the same numbers) and the blocks are all-gathered, so every rank sees every
feature in order.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Callable, Iterator, TypeVar

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Subset
from tqdm import tqdm

from eval.faces import iter_batches, read_face
from utils.dataset import IMAGE_EXTENSIONS, MXFaceDataset, list_image_folder
from utils.distributed import (
    DistEnv,
    all_gather_objects,
    barrier,
    broadcast_object,
    cleanup,
    init_distributed,
)
from utils.errors import DatasetError

if TYPE_CHECKING:  # eval.embedder loads the network code: not at import time
    from eval.embedder import EmbedFn

__all__ = [
    "FaceSource",
    "FolderFaceSource",
    "RecFaceSource",
    "extract_features",
    "finish_distributed",
    "iter_features",
    "launch_env",
    "open_face_source",
    "rank_plan",
    "steps_on_ranks",
]

T = TypeVar("T")

FACE_SIZE = 112
# batches per rank between two all-gathers: bounds the memory of a gather (and of what a
# MegaFace run holds before writing) while keeping the collectives rare
CHUNK_BATCHES = 32


# --------------------------------------------------------------------------------------------
# face sources
# --------------------------------------------------------------------------------------------


class FaceSource(Dataset):
    """Aligned faces of an evaluation set: item ``i`` is a (3, 112, 112) uint8 RGB tensor.

    ``labels``: (N,) int64 identity ids; ``names``: one name per face (a path relative to the
    root, or ``rec:<key>``); ``stamp_paths``: the files whose eval.steps.file_stamp keys a
    feature cache of this set.
    """

    root: str
    labels: np.ndarray
    names: list[str]
    stamp_paths: list[str]

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, index: int) -> torch.Tensor:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.root}, {len(self)} faces, {len(np.unique(self.labels))} identities)"


class RecFaceSource(FaceSource):
    """The images of ``root/train.rec`` (+ ``train.idx``), decoded as the trainer does, not mirrored."""

    def __init__(self, root: str):
        self.root = root
        # label_check="full": an evaluation needs every label, however large the file
        self.dataset = MXFaceDataset(root, augment=False, label_check="full")
        if tuple(self.dataset.image_size) != (FACE_SIZE, FACE_SIZE):
            h, w = self.dataset.image_size
            raise DatasetError(
                f"{os.path.join(root, 'property')}: images are {w}x{h}, the evaluation takes "
                f"aligned {FACE_SIZE}x{FACE_SIZE} crops"
            )
        self.labels = np.asarray(self.dataset.labels, np.int64)
        self.names = [f"rec:{int(key)}" for key in self.dataset.keys]
        self.stamp_paths = [self.dataset.path_rec, self.dataset.path_idx]

    def __getitem__(self, index: int) -> torch.Tensor:
        image, _ = self.dataset[index]  # a CHW view of the decoded pixels; batches stack it
        return image


class FolderFaceSource(FaceSource):
    """``root/<identity>/<image>``: identities sorted by name are labels 0..C-1, images sorted."""

    def __init__(self, root: str):
        self.root = root
        paths, labels, _ = list_image_folder(root)  # raises on no identities / an empty identity
        _refuse_other_files(root, paths)
        self.paths = paths
        self.labels = np.asarray(labels, np.int64)
        self.names = [os.path.relpath(p, root).replace(os.sep, "/") for p in paths]
        self.stamp_paths = list(paths)

    def __getitem__(self, index: int) -> torch.Tensor:
        path = self.paths[index]
        try:
            rgb = read_face(path, None, FACE_SIZE, no_landmarks="an image folder holds aligned crops only")
        except FileNotFoundError:
            if not os.path.exists(path):
                raise
            raise DatasetError(f"{path}: not a decodable image (corrupt, or not an image)") from None
        return torch.from_numpy(np.ascontiguousarray(rgb.transpose(2, 0, 1)))


def _refuse_other_files(root: str, images: list[str]) -> None:
    """A file in an identity folder that is not an image: an error, not a silently smaller set."""
    folders = sorted({os.path.dirname(p) for p in images})
    for folder in folders:
        for entry in sorted(os.scandir(folder), key=lambda e: e.name):
            if entry.is_file() and not entry.name.startswith(".") and not entry.name.lower().endswith(IMAGE_EXTENSIONS):
                raise DatasetError(
                    f"{entry.path}: not an image file (expected {', '.join(IMAGE_EXTENSIONS)}); "
                    f"move it out of {root}"
                )


def open_face_source(path: str | os.PathLike) -> FaceSource:
    """The faces at ``path``: a folder with ``train.rec`` + ``train.idx`` (or that ``.rec``), or
    an image folder with one sub-folder of aligned 112x112 crops per identity."""
    path = os.fspath(path)
    if os.path.isfile(path) and path.endswith(".rec"):
        path = os.path.dirname(path) or "."
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{path}: face set not found (expected a folder)")
    if os.path.isfile(os.path.join(path, "train.rec")):
        return RecFaceSource(path)
    return FolderFaceSource(path)


# --------------------------------------------------------------------------------------------
# sharding and gathering
# --------------------------------------------------------------------------------------------


def rank_plan(
    count: int, batch_size: int, world_size: int, chunk_batches: int = CHUNK_BATCHES
) -> list[list[range]]:
    """Per gathered block, the image range each rank embeds: whole batches of the one-process run.

    A block is ``world_size * chunk_batches`` batches (the last one fewer); rank ``r`` takes a
    contiguous run of its batches, rank 0 first, so rank 0 is never empty and the ranges of a
    block, in rank order, are the block.
    """
    if batch_size < 1 or world_size < 1 or chunk_batches < 1:
        raise ValueError(f"rank_plan: batch_size {batch_size}, world_size {world_size} and "
                         f"chunk_batches {chunk_batches} must be >= 1")
    plan = []
    step = world_size * chunk_batches * batch_size
    for start in range(0, count, step):
        stop = min(start + step, count)
        batches = -(-(stop - start) // batch_size)
        each = -(-batches // world_size)
        plan.append([
            range(min(start + r * each * batch_size, stop), min(start + (r + 1) * each * batch_size, stop))
            for r in range(world_size)
        ])
    return plan


def _collective_device() -> torch.device:
    # NCCL moves CUDA tensors only; gloo moves CPU tensors
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _gather_rows(env: DistEnv, local: np.ndarray, rows: list[int]) -> np.ndarray:
    """Every rank's float32 rows (``rows[r]`` of them on rank r), concatenated in rank order."""
    widths = {w for w in all_gather_objects(env, local.shape[1] if len(local) else None) if w is not None}
    if len(widths) != 1:
        raise RuntimeError(f"extract: the ranks' embeddings have different sizes {sorted(widths)}")
    width = widths.pop()
    # padded to the largest share: all_gather moves equal shapes; the float32 bits are copied as they are
    device = _collective_device()
    padded = torch.zeros((max(rows), width), dtype=torch.float32, device=device)
    if len(local):
        padded[: len(local)] = torch.from_numpy(np.ascontiguousarray(local, np.float32)).to(device)
    parts = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(parts, padded)
    return np.concatenate([part[:n].cpu().numpy() for part, n in zip(parts, rows)])


def _embed_device(embed: EmbedFn) -> torch.device:
    return torch.device(getattr(embed, "device", "cpu"))


def iter_features(
    embed: EmbedFn,
    faces: Dataset,
    batch_size: int = 128,
    flip: bool = True,
    env: DistEnv | None = None,
    workers: int = 2,
    desc: str | None = None,
    chunk_batches: int = CHUNK_BATCHES,
) -> Iterator[tuple[int, np.ndarray, np.ndarray | None]]:
    """(start, embs, embs_flip) of consecutive blocks of ``faces`` in order, on every rank.

    One process: one block per batch. Under torchrun (``env.world_size > 1``): a block per
    :func:`rank_plan` entry, each rank embedding its batches, the block all-gathered. The batches
    are those of the one-process run either way, embedded by eval.embedder.embed_batches (the
    flip test); ``workers`` threads read them ahead (eval.faces.iter_batches).
    """
    from eval.embedder import embed_batches  # here: importing eval.extract loads no network code

    pin = _embed_device(embed).type == "cuda"
    main = env is None or env.is_main
    with tqdm(total=len(faces), desc=desc, unit="face", leave=False, disable=desc is None or not main) as bar:
        if env is None or not env.distributed:
            start = 0
            for emb, emb_flip in embed_batches(embed, iter_batches(faces, batch_size, workers, pin), flip):
                yield start, emb, emb_flip
                start += len(emb)
                bar.update(len(emb))
            return
        plan = rank_plan(len(faces), batch_size, env.world_size, chunk_batches)
        mine = [i for block in plan for i in block[env.rank]]
        # this rank's ranges end on batch boundaries (but the data set's last), so batching their
        # concatenation gives the one-process batches, read by one pipeline of threads
        batches = embed_batches(embed, iter_batches(Subset(faces, mine), batch_size, workers, pin), flip)
        for block in plan:
            local = _embed_share(batches, len(block[env.rank]), flip)
            rows = _gather_rows(env, local, [len(r) for r in block])
            width = rows.shape[1] // 2 if flip else rows.shape[1]
            yield block[0].start, rows[:, :width], rows[:, width:] if flip else None
            bar.update(len(rows))
        if next(batches, None) is not None:  # ends the reading threads too
            raise RuntimeError("extract: more batches than the plan holds")


def _embed_share(batches: Iterator, count: int, flip: bool) -> np.ndarray:
    """The next ``count`` faces' embeddings from ``batches`` (beside their mirrors' with flip)."""
    parts = []
    while count > 0:
        emb, emb_flip = next(batches)
        parts.append(np.concatenate([emb, emb_flip], axis=1) if flip else emb)
        count -= len(emb)
    return np.concatenate(parts) if parts else np.zeros((0, 0), np.float32)


def extract_features(
    embed: EmbedFn,
    source: Dataset,
    batch_size: int = 128,
    flip: bool = True,
    env: DistEnv | None = None,
    workers: int = 2,
    desc: str | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """Embeddings of every face of ``source`` and of its mirror (None with ``flip=False``).

    float32 (N, D) each, in source order, on every rank (see :func:`iter_features`).
    """
    embs = embs_flip = None
    for start, emb, emb_flip in iter_features(embed, source, batch_size, flip, env, workers, desc):
        if embs is None:
            embs = np.empty((len(source), emb.shape[1]), np.float32)
            embs_flip = np.empty_like(embs) if flip else None
        embs[start : start + len(emb)] = emb
        if flip:
            embs_flip[start : start + len(emb)] = emb_flip
    if embs is None:  # no faces
        embs = np.zeros((0, getattr(embed, "embedding_size", 0)), np.float32)
        embs_flip = embs.copy() if flip else None
    return embs, embs_flip


# --------------------------------------------------------------------------------------------
# the evaluators' process group
# --------------------------------------------------------------------------------------------


def launch_env() -> DistEnv | None:
    """The process group when launched by torchrun with more than one process, else None.

    Ranks other than 0 log warnings only: rank 0 reports the run.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None  # a plain run touches neither CUDA nor torch.distributed
    env = init_distributed()
    if not env.is_main:
        logging.getLogger().setLevel(logging.WARNING)
    return env


def steps_on_ranks(
    env: DistEnv | None, evaluate: Callable[[str], Any], run_loop: Callable[[Callable[[str], Any]], T]
) -> T | None:
    """A run folder's loop on every rank: rank 0 runs ``run_loop(evaluate')`` and returns its result.

    ``evaluate'`` announces each weight file to the other ranks before evaluating it, so they
    embed the same files with rank 0; they evaluate what is announced until rank 0 is done and
    return None. Rank 0 alone reads and writes the steps cache, which decides which files need it.
    One process: ``run_loop(evaluate)``.
    """
    if env is None or not env.distributed:
        return run_loop(evaluate)
    if not env.is_main:
        while (path := broadcast_object(env, None)) is not None:
            evaluate(path)
        return None

    def announced(path: str) -> Any:
        broadcast_object(env, path)
        return evaluate(path)

    result = run_loop(announced)
    broadcast_object(env, None)  # the other ranks' loop ends
    return result


def finish_distributed(env: DistEnv | None) -> None:
    """Every rank waits for rank 0's outputs, then leaves the group (no-op for one process)."""
    if env is not None:
        barrier(env)
        cleanup(env)
