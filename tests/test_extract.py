"""eval/extract: face sources (.rec folder, identity image folder), the rank plan, extraction."""

import cv2
import numpy as np
import pytest
import torch

from eval.embedder import Embedder, embed_faces, mirror
from eval.extract import (
    FolderFaceSource,
    RecFaceSource,
    extract_features,
    iter_features,
    open_face_source,
    rank_plan,
)
from eval.faces import iter_batches
from tools import make_synthetic
from utils.dataset import MXFaceDataset
from utils.errors import DatasetError, UserError


@pytest.fixture(scope="module")
def rec_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("rec")
    make_synthetic.main(["--output", str(out), "--num-ids", "3", "--images-per-id", "3", "--targets", "train",
                         "--workers", "1", "--no-progress", "--force"])
    return out


def random_face(seed, size=(112, 112)):
    return np.random.default_rng(seed).integers(0, 256, (*size, 3), dtype=np.uint8)


@pytest.fixture
def folder(tmp_path):
    """Two identities, written out of order: 'b_id' (1 image) and 'a_id' (2), lossless PNGs."""
    root = tmp_path / "faces"
    for name, seed in [("b_id/x.png", 0), ("a_id/img_02.png", 1), ("a_id/img_01.png", 2)]:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(root / name), random_face(seed))
    return root


@pytest.fixture(scope="module")
def embedder():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 8, stride=8), torch.nn.Flatten(), torch.nn.Linear(4 * 14 * 14, 8))
    return Embedder.from_module(net.eval(), device="cpu", batch_size=4)


def test_rec_source_reads_the_trainers_pixels_without_flip(rec_dir):
    source = open_face_source(rec_dir)
    assert isinstance(source, RecFaceSource) and len(source) == 9
    plain = MXFaceDataset(rec_dir, augment=False)
    assert source.labels.dtype == np.int64 and source.labels.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert source.names == [f"rec:{k}" for k in plain.keys] and source.names[0] == "rec:1"
    assert source.stamp_paths == [str(rec_dir / "train.rec"), str(rec_dir / "train.idx")]
    for i in range(len(source)):
        face = source[i]
        assert face.shape == (3, 112, 112) and face.dtype == torch.uint8
        assert torch.equal(face, plain[i][0])
    assert isinstance(open_face_source(rec_dir / "train.rec"), RecFaceSource)  # the .rec file itself


def test_folder_source_order_labels_names_and_rgb(folder):
    source = open_face_source(folder)
    assert isinstance(source, FolderFaceSource)
    assert source.names == ["a_id/img_01.png", "a_id/img_02.png", "b_id/x.png"]
    assert source.labels.dtype == np.int64 and source.labels.tolist() == [0, 0, 1]
    assert source.stamp_paths == [str(folder / n) for n in source.names]
    for i, seed in enumerate([2, 1, 0]):  # BGR written, RGB read
        expected = torch.from_numpy(random_face(seed)[:, :, ::-1].transpose(2, 0, 1).copy())
        assert torch.equal(source[i], expected)


def test_folder_errors_name_the_path(folder, tmp_path):
    (folder / "c_id").mkdir()
    with pytest.raises(DatasetError, match=r"c_id: identity folder has no images"):
        open_face_source(folder)
    (folder / "c_id").rmdir()
    (folder / "a_id" / "notes.txt").write_text("x")
    with pytest.raises(DatasetError, match=r"a_id/notes\.txt: not an image file"):
        open_face_source(folder)
    (folder / "a_id" / "notes.txt").unlink()
    flat = tmp_path / "flat"
    flat.mkdir()
    cv2.imwrite(str(flat / "a.png"), random_face(0))
    with pytest.raises(DatasetError, match=r"flat: no identity sub-folders"):
        open_face_source(flat)
    with pytest.raises(FileNotFoundError, match="nowhere"):
        open_face_source(tmp_path / "nowhere")

    cv2.imwrite(str(folder / "b_id" / "y.png"), random_face(3, (120, 100)))
    (folder / "b_id" / "z.jpg").write_bytes(b"not a jpeg")
    source = open_face_source(folder)
    with pytest.raises(DatasetError, match=r"b_id/y\.png: image is 100x120, not an aligned 112x112 crop"):
        source[source.names.index("b_id/y.png")]
    with pytest.raises(DatasetError, match=r"b_id/z\.jpg: not a decodable image"):
        source[source.names.index("b_id/z.jpg")]
    assert issubclass(DatasetError, UserError)


@pytest.mark.parametrize("count,batch,world,chunk", [(0, 4, 2, 1), (1, 4, 3, 1), (10, 3, 2, 1), (10, 3, 4, 1),
                                                     (37, 4, 3, 2), (64, 8, 2, 32), (5, 3, 4, 2)])
def test_rank_plan_keeps_the_one_process_batches(count, batch, world, chunk):
    plan = rank_plan(count, batch, world, chunk)
    flat = [i for block in plan for r in block for i in r]
    assert flat == list(range(count))  # blocks in order, ranks in order within a block
    for block in plan:
        assert len(block) == world and len(block[0]) > 0  # rank 0 always has a share
        assert sum(len(r) for r in block) <= world * chunk * batch
        for r in filter(len, block):  # whole batches of the one-process run: starts on multiples of batch
            assert r.start % batch == 0 and (r.stop % batch == 0 or r.stop == count)


def test_rank_plan_rejects_zero_sizes():
    with pytest.raises(ValueError, match="batch_size 0"):
        rank_plan(4, 0, 1)


def test_extract_features_is_embed_faces_on_the_same_batches(rec_dir, embedder, one_torch_thread):
    source = open_face_source(rec_dir)
    embs, embs_flip = extract_features(embedder, source, batch_size=4, workers=2)
    want, want_flip = embed_faces(embedder, iter_batches(source, 4, 0), len(source))
    assert embs.shape == (9, 8) and embs.dtype == np.float32
    assert np.array_equal(embs, want) and np.array_equal(embs_flip, want_flip)
    # the flip test is eval.embedder's: the mirror of each batch
    batch = torch.stack([source[i] for i in range(4)])
    assert np.array_equal(embs_flip[:4], embedder(mirror(batch)))
    only, none = extract_features(embedder, source, batch_size=4, flip=False, workers=0)
    assert none is None and np.array_equal(only, embs)
    starts = [start for start, _, _ in iter_features(embedder, source, batch_size=4, workers=0)]
    assert starts == [0, 4, 8]


def test_extract_features_of_no_faces(embedder):
    embs, embs_flip = extract_features(embedder, torch.utils.data.TensorDataset(torch.zeros(0)), batch_size=4)
    assert embs.shape == (0, 8) and embs_flip.shape == (0, 8)
