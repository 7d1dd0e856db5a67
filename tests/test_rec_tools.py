"""tools/im2rec.py, tools/rec2idx.py, tools/shuffle_rec.py on tiny inputs."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path

import cv2
import numpy as np
import pytest

from tools import im2rec, rec2idx, shuffle_rec
from utils.dataset import MXFaceDataset, list_image_folder
from utils.recordio import MXIndexedRecordIO, unpack

FIXTURES = Path(__file__).resolve().parent / "data" / "mxnet"  # written by mxnet 1.9.1, see data/README.md
COUNTS = {"alice": 3, "bob": 2, "carol": 4}  # sorted names -> classes 0, 1, 2


def smooth_image(rng: np.random.Generator, size: int = 112) -> np.ndarray:
    """A random, smooth BGR image (JPEG keeps smooth images close to the original)."""
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)


@pytest.fixture
def tree(tmp_path) -> tuple[Path, dict[str, np.ndarray]]:
    """An image-folder tree: PNG files (exact pixels) plus one JPEG per identity."""
    rng = np.random.default_rng(0)
    root, images = tmp_path / "faces", {}
    for name, n in COUNTS.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = smooth_image(rng)
            path = root / name / f"{i:02d}.{'jpg' if i == 0 else 'png'}"
            cv2.imwrite(str(path), img)
            images[str(path)] = cv2.imread(str(path))  # what the file decodes to
    (root / "bob" / "notes.txt").write_text("not an image")  # ignored: no image extension
    return root, images


def rgb_of(bgr: np.ndarray) -> np.ndarray:
    """The uint8 CHW RGB tensor the datasets hand out for a BGR image."""
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB).transpose(2, 0, 1)


def test_im2rec_png_is_exact_and_layout_is_insightface(tree, tmp_path):
    root, images = tree
    out = tmp_path / "rec"
    assert im2rec.main([str(root), str(out), "--format", "png", "--quiet"]) == 0
    assert (out / "property").read_text() == "3,112,112"

    r = MXIndexedRecordIO(out / "train.idx", out / "train.rec", "r")
    assert r.keys == list(range(1 + 9 + 3))
    header, payload = unpack(r.read_idx(0))
    assert header.flag == 2 and list(header.label) == [10.0, 13.0] and payload == b""
    ranges = [list(unpack(r.read_idx(k))[0].label) for k in (10, 11, 12)]
    assert ranges == [[1.0, 4.0], [4.0, 6.0], [6.0, 10.0]]
    assert [unpack(r.read_idx(k))[0].id for k in range(13)] == list(range(13))

    paths, labels, names = list_image_folder(root)
    assert names == ["alice", "bob", "carol"] and labels == [0, 0, 0, 1, 1, 2, 2, 2, 2]
    ds = MXFaceDataset(out, augment=False)
    assert (len(ds), ds.num_classes) == (9, 3)
    assert ds.labels.tolist() == labels
    for i, path in enumerate(paths):
        x, y = ds[i]
        assert int(y) == labels[i]
        np.testing.assert_array_equal(x.numpy(), rgb_of(images[path]))


def test_im2rec_jpeg_default_within_tolerance_and_keep_jpeg(tree, tmp_path):
    root, images = tree
    out, kept = tmp_path / "jpg", tmp_path / "kept"
    assert im2rec.main([str(root), str(out), "--quiet"]) == 0
    assert im2rec.main([str(root), str(kept), "--keep-jpeg", "--quiet"]) == 0
    paths, labels, _ = list_image_folder(root)
    ds = MXFaceDataset(out, augment=False)
    for i, path in enumerate(paths):
        x, y = ds[i]
        assert int(y) == labels[i]
        err = np.abs(x.numpy().astype(np.float64) - rgb_of(images[path]))  # in 0..255 units
        assert err.mean() < 2.0 and err.max() < 40
    # --keep-jpeg stores the JPEG files' own bytes; the PNGs are still re-encoded as JPEG
    r = MXIndexedRecordIO(kept / "train.idx", kept / "train.rec", "r")
    for key, path in enumerate(paths, 1):
        payload = unpack(r.read_idx(key))[1]
        if path.endswith(".jpg"):
            assert payload == Path(path).read_bytes()
        else:
            assert payload[:3] == b"\xff\xd8\xff" and payload != Path(path).read_bytes()


def test_im2rec_workers_give_the_same_file(tree, tmp_path):
    root, _ = tree
    im2rec.main([str(root), str(tmp_path / "w1"), "--quiet"])
    im2rec.main([str(root), str(tmp_path / "w2"), "--workers", "2", "--quiet"])
    for name in ("train.rec", "train.idx", "property"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes()


def test_im2rec_size_check_and_resize(tree, tmp_path, user_error):
    root, _ = tree
    odd = root / "bob" / "big.png"
    big = smooth_image(np.random.default_rng(1), 150)
    cv2.imwrite(str(odd), big)
    out = tmp_path / "rec"
    line = user_error(im2rec.main, [root, out, "--quiet"], extra=(ValueError,))
    assert line == f"error: ValueError: {odd}: image is 150x150, expected 112x112; pass --resize to resize it"
    assert not out.exists() or not any(out.iterdir())  # nothing half-written
    assert im2rec.main([str(root), str(out), "--resize", "--format", "png", "--quiet"]) == 0
    ds = MXFaceDataset(out, augment=False)
    paths, _, _ = list_image_folder(root)
    x, _ = ds[paths.index(str(odd))]
    expected = cv2.resize(big, (112, 112), interpolation=cv2.INTER_AREA)
    np.testing.assert_array_equal(x.numpy(), rgb_of(expected))


def test_im2rec_unreadable_image_names_file(tree, tmp_path, user_error):
    root, _ = tree
    bad = root / "carol" / "zz.jpg"
    bad.write_bytes(b"\xff\xd8\xff garbage")
    line = user_error(im2rec.main, [root, tmp_path / "rec", "--quiet"], extra=(ValueError,))
    assert f"{bad}: cannot decode the image" in line


def test_im2rec_refuses_to_overwrite_without_force(tree, tmp_path, user_error):
    root, _ = tree
    out = tmp_path / "rec"
    assert im2rec.main([str(root), str(out), "--quiet"]) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    err = user_error(im2rec.main, [root, out, "--format", "png", "--quiet"], extra=(ValueError,))
    assert err.startswith("error: FileExistsError: refusing to overwrite")
    assert "refusing to overwrite" in err and "train.rec" in err and "--force" in err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert im2rec.main([str(root), str(out), "--format", "png", "--force", "--quiet"]) == 0
    assert (out / "train.rec").read_bytes() != before["train.rec"]
    assert sorted(p.name for p in out.iterdir()) == ["property", "train.idx", "train.rec"]  # no temp files


@pytest.mark.parametrize("layout", ["path_label", "insightface", "mxnet"])
def test_im2rec_from_lst(tree, tmp_path, layout):
    root, images = tree
    paths, labels, _ = list_image_folder(root)
    order = [4, 0, 8, 1, 5, 2, 6, 3, 7]  # mixed classes: im2rec groups them by label
    lines = []
    for i in order:
        rel = str(Path(paths[i]).relative_to(tmp_path))
        lines.append({"path_label": f"{rel}\t{labels[i]}",
                      "insightface": f"1\t{rel}\t{labels[i]}",
                      "mxnet": f"{i}\t{labels[i]}.000000\t{rel}"}[layout])
    lst = tmp_path / "train.lst"
    lst.write_text("\n".join(lines) + "\n")
    out = tmp_path / "rec"
    assert im2rec.main([str(lst), str(out), "--format", "png", "--quiet"]) == 0
    ds = MXFaceDataset(out, augment=False)
    expected_order = sorted(order, key=lambda i: labels[i])  # stable within a class
    assert ds.labels.tolist() == sorted(labels)
    for k, i in enumerate(expected_order):
        np.testing.assert_array_equal(ds[k][0].numpy(), rgb_of(images[paths[i]]))


def test_lst_with_missing_class_is_rejected(tmp_path):
    lst = tmp_path / "bad.lst"
    lst.write_text("a.jpg\t0\nb.jpg\t2\n")
    with pytest.raises(ValueError, match=r"bad\.lst: labels must be 0\.\.C-1.*label 1 is missing"):
        im2rec.read_lst(lst)
    lst.write_text("a.jpg\tzero\n")
    with pytest.raises(ValueError, match=r"bad\.lst: line 1"):
        im2rec.read_lst(lst)


# ------------------------------------------------------------------------------------------
# rec2idx
# ------------------------------------------------------------------------------------------
def copy_rec(tmp_path: Path) -> Path:
    rec = tmp_path / "train.rec"
    shutil.copyfile(FIXTURES / "train.rec", rec)
    return rec


@pytest.mark.parametrize("key", ["id", "sequential"])
def test_rec2idx_reproduces_fixture_index(tmp_path, key):
    rec = copy_rec(tmp_path)
    assert rec2idx.main([str(rec), "--key", key, "--quiet"]) == 0
    assert (tmp_path / "train.idx").read_text() == (FIXTURES / "train.idx").read_text()


def test_rec2idx_id_and_sequential_differ_on_a_shuffled_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    shutil.copyfile(FIXTURES / "train.rec", src / "train.rec")
    shutil.copyfile(FIXTURES / "train.idx", src / "train.idx")
    # a file whose ids are not 0..N-1 in order: rewrite the fixture's images in reverse
    w = MXIndexedRecordIO(tmp_path / "rev.idx", tmp_path / "rev.rec", "w")
    r = MXIndexedRecordIO(src / "train.idx", src / "train.rec", "r")
    for k in range(20, 0, -1):
        w.write_idx(k, r.read_idx(k))
    w.close()
    written = (tmp_path / "rev.idx").read_text()
    (tmp_path / "rev.idx").unlink()
    assert rec2idx.main([str(tmp_path / "rev.rec"), "--quiet"]) == 0
    assert (tmp_path / "rev.idx").read_text() == written  # keys 20, 19, ... as written
    out = tmp_path / "seq.idx"
    assert rec2idx.main([str(tmp_path / "rev.rec"), str(out), "--key", "sequential", "--quiet"]) == 0
    offsets = [line.split("\t")[1] for line in written.splitlines()]
    assert out.read_text() == "".join(f"{i}\t{o}\n" for i, o in enumerate(offsets))


def test_rec2idx_duplicate_ids_suggest_sequential(tmp_path, user_error):
    rec = tmp_path / "plain.rec"
    data = (FIXTURES / "plain.rec").read_bytes()
    rec.write_bytes(data + data)  # ids 0..4 twice
    assert "both have id 0; use --key sequential" in user_error(rec2idx.main, [rec, "--quiet"], extra=(ValueError,))
    assert not (tmp_path / "plain.idx").exists()
    assert rec2idx.main([str(rec), "--key", "sequential", "--quiet"]) == 0
    sizes = [8 + 24 + (n + 3) // 4 * 4 for n in (97, 98, 99, 100, 101)] * 2
    assert (tmp_path / "plain.idx").read_text() == "".join(
        f"{i}\t{sum(sizes[:i])}\n" for i in range(10)
    )


def test_rec2idx_refuses_to_overwrite_without_force(tmp_path, user_error):
    rec = copy_rec(tmp_path)
    idx = tmp_path / "train.idx"
    idx.write_text("stale\n")
    assert "FileExistsError: refusing to overwrite" in user_error(rec2idx.main, [rec, "--quiet"], extra=(ValueError,))
    assert idx.read_text() == "stale\n"
    assert rec2idx.main([str(rec), "--force", "--quiet"]) == 0
    assert idx.read_text() == (FIXTURES / "train.idx").read_text()


def test_rec2idx_truncated_rec_names_offset(tmp_path, user_error):
    rec = tmp_path / "train.rec"
    rec.write_bytes((FIXTURES / "train.rec").read_bytes()[:10000])
    line = user_error(rec2idx.main, [rec, "--quiet"], extra=(ValueError,))
    assert line.startswith(f"error: RecordIOError: {rec}") and "record at byte 8492 is truncated" in line
    assert not (tmp_path / "train.idx").exists()


# ------------------------------------------------------------------------------------------
# shuffle_rec
# ------------------------------------------------------------------------------------------
def records_of(root: Path) -> list[tuple[int, bytes, int]]:
    """(label, payload, id2) of each record, in key order."""
    r = MXIndexedRecordIO(root / "train.idx", root / "train.rec", "r")
    out = []
    for k in r.keys:
        h, p = unpack(r.read_idx(k))
        out.append((int(h.label if h.flag == 0 else h.label[0]), p, h.id2))
    return out


def test_shuffle_rec_keeps_images_and_labels(tmp_path):
    dst = tmp_path / "shuffled"
    assert shuffle_rec.main([str(FIXTURES), str(dst), "--seed", "3", "--quiet"]) == 0
    src = records_of(FIXTURES)[1:21]  # the fixture's image records
    got = records_of(dst)
    assert len(got) == 20
    assert Counter((lab, p) for lab, p, _ in got) == Counter((lab, p) for lab, p, _ in src)
    assert [lab for lab, _, _ in got] != [lab for lab, _, _ in src]  # the order changed
    # id2 remembers the source key; ids are the new keys 0..N-1
    for lab, payload, old in got:
        assert src[old - 1][:2] == (lab, payload)
    r = MXIndexedRecordIO(dst / "train.idx", dst / "train.rec", "r")
    assert r.keys == list(range(20))
    assert [unpack(r.read_idx(k))[0].id for k in range(20)] == list(range(20))
    assert (dst / "property").read_text() == "4,112,112"  # from the 4 identity records

    ds = MXFaceDataset(dst, augment=False)
    assert ds.header0 is None and ds.num_classes == 4
    assert ds.labels.tolist() == [lab for lab, _, _ in got]
    # the same image through both datasets
    orig = MXFaceDataset(FIXTURES, augment=False)
    old = got[0][2]
    np.testing.assert_array_equal(ds[0][0].numpy(), orig[old - 1][0].numpy())

    # rec2idx rebuilds the written index from the new ids
    written = (dst / "train.idx").read_text()
    assert rec2idx.main([str(dst / "train.rec"), "--force", "--quiet"]) == 0
    assert (dst / "train.idx").read_text() == written


def test_shuffle_rec_is_seeded(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        shuffle_rec.main([str(FIXTURES), str(tmp_path / name), "--seed", str(seed), "--quiet"])
    read = lambda n: (tmp_path / n / "train.rec").read_bytes()  # noqa: E731
    assert read("a") == read("b") != read("c")


def test_shuffle_of_a_plain_file_and_refusal(tmp_path, user_error):
    first, second = tmp_path / "s1", tmp_path / "s2"
    assert shuffle_rec.main([str(FIXTURES), str(first), "--quiet"]) == 0
    assert shuffle_rec.main([str(first), str(second), "--seed", "5", "--quiet"]) == 0
    assert Counter(r[:2] for r in records_of(second)) == Counter(r[:2] for r in records_of(first))
    assert (second / "property").read_text() == "4,112,112"  # carried over
    before = (second / "train.rec").read_bytes()
    line = user_error(shuffle_rec.main, [first, second, "--seed", "6", "--quiet"], extra=(ValueError,))
    assert line.startswith("error: FileExistsError: refusing to overwrite") and "train.rec" in line
    assert (second / "train.rec").read_bytes() == before
    assert shuffle_rec.main([str(first), str(second), "--seed", "6", "--force", "--quiet"]) == 0
    assert (second / "train.rec").read_bytes() != before


def test_cli_help(capsys):
    for tool in (im2rec, rec2idx, shuffle_rec):
        with pytest.raises(SystemExit) as e:
            tool.main(["--help"])
        assert e.value.code == 0
    assert "--force" in capsys.readouterr().out
