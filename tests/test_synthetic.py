"""The synthetic face dataset: real formats, determinism, held-out evaluation identities."""

from __future__ import annotations

import hashlib
import json
import os
import pickle

import cv2
import numpy as np
import pytest

from eval.verification import load_bin
from tools import make_synthetic as ms
from tools import synthetic_faces as sf
from utils.dataset import MXFaceDataset
from utils.errors import UnknownNameError
from utils.recordio import MXIndexedRecordIO, unpack

TINY = ["--num-ids", "5", "--images-per-id", "3", "--eval-ids", "6", "--pairs", "20", "--no-progress"]
BINS = ("lfw", "cfp_fp", "agedb_30", "calfw", "cplfw")


def digests(path) -> dict[str, str]:
    return {f: hashlib.sha256(open(os.path.join(path, f), "rb").read()).hexdigest()
            for f in sorted(os.listdir(path))}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("syn") / "data"
    manifest = ms.main(["--output", str(out), "--workers", "1", *TINY])
    return out, manifest


def test_same_seed_same_bytes_whatever_the_workers(tiny, tmp_path):
    out, _ = tiny
    ms.main(["--output", str(tmp_path / "w2"), "--workers", "2", *TINY])
    assert digests(tmp_path / "w2") == digests(out)


def test_another_seed_gives_other_images(tiny, tmp_path):
    out, _ = tiny
    ms.main(["--output", str(tmp_path / "s1"), "--workers", "1", "--seed", "1", *TINY])
    a, b = digests(out), digests(tmp_path / "s1")
    assert all(a[f] != b[f] for f in ("train.rec", "lfw.bin", "cfp_fp.bin"))
    assert a["property"] == b["property"]


def test_train_rec_has_the_insightface_layout(tiny):
    out, manifest = tiny
    rec = MXIndexedRecordIO(str(out / "train.idx"), str(out / "train.rec"), "r")
    header, _ = unpack(rec.read_idx(0))
    n = manifest["num_images"]
    assert n == 15 and list(header.label) == [n + 1, n + 1 + 5]
    labels = [float(unpack(rec.read_idx(k))[0].label) for k in range(1, n + 1)]
    assert labels == [float(c) for c in range(5) for _ in range(3)]
    for c in range(5):  # identity records: [start, end) of each class's image keys
        assert list(unpack(rec.read_idx(n + 1 + c))[0].label) == [1 + 3 * c, 4 + 3 * c]
    _, jpeg = unpack(rec.read_idx(1))
    assert cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR).shape == (112, 112, 3)
    assert (out / "property").read_text() == "5,112,112"
    ds = MXFaceDataset(str(out))
    ds.set_epoch(0)
    image, label = ds[14]
    assert ds.num_classes == 5 and int(label) == 4 and tuple(image.shape) == (3, 112, 112)


def test_images_of_one_identity_differ(tiny):
    out, _ = tiny
    rec = MXIndexedRecordIO(str(out / "train.idx"), str(out / "train.rec"), "r")
    images = [cv2.imdecode(np.frombuffer(unpack(rec.read_idx(k))[1], np.uint8), cv2.IMREAD_COLOR)
              for k in (1, 2, 3)]
    assert all(np.abs(images[i].astype(int) - images[j]).mean() > 5 for i, j in ((0, 1), (0, 2), (1, 2)))


@pytest.mark.parametrize("name", BINS)
def test_bins_load_with_ten_folds_positives_first(tiny, name):
    out, manifest = tiny
    with open(out / f"{name}.bin", "rb") as f:
        bins, issame = pickle.load(f, encoding="bytes")
    assert len(bins) == 40 and len(issame) == 20 and all(isinstance(b, bytes) for b in bins)
    assert issame == [True, False] * 10  # folds of 2 pairs: one positive, then one negative
    (images, flipped), loaded_issame = load_bin(str(out / f"{name}.bin"))
    assert tuple(images.shape) == (40, 3, 112, 112) and loaded_issame == issame
    assert manifest["bins"][name]["positive"] == manifest["bins"][name]["negative"] == 10


def test_pair_layout_matches_kfold_splits():
    issame = ms.pair_layout(6000)
    assert len(issame) == 6000 and sum(issame) == 3000
    assert issame[:300] == [True] * 300 and issame[300:600] == [False] * 300
    odd = ms.pair_layout(25)  # folds of 3,3,3,3,3,2,2,2,2,2 as KFold makes them
    assert len(odd) == 25 and odd[:3] == [True, True, False] and odd[-2:] == [True, False]
    with pytest.raises(ValueError, match="--pairs must be at least 20"):
        ms.pair_layout(19)


def test_evaluation_identities_are_held_out():
    train_ids = set(range(50))
    eval_ids = range(50, 80)
    for name in BINS:
        plans = ms.plan_pairs(0, name, eval_ids, 100)
        used = {i for p in plans for i in p["ids"]}
        assert used <= set(eval_ids) and not used & train_ids
        assert all((p["ids"][0] == p["ids"][1]) == p["issame"] for p in plans)


def test_manifest_records_the_split_and_command(tiny):
    out, manifest = tiny
    on_disk = json.loads((out / "manifest.json").read_text())
    assert on_disk["train_identities"] == [0, 5] and on_disk["eval_identities"] == [5, 11]
    assert on_disk["command"].startswith("python -m tools.make_synthetic --output DIR --num-ids 5")
    assert on_disk["seed"] == 0 and set(on_disk["bins"]) == set(BINS)
    assert (out / "README.md").read_text().startswith("# Synthetic faces")


def test_profiles_stress_their_nuisance():
    def yaws(profile: str) -> np.ndarray:
        prof = sf.get_profile(profile)
        return np.array([abs(sf.sample_nuisance(sf.image_rng(0, 99, k, 0), prof)["yaw"]) for k in range(300)])

    assert np.median(yaws("cfp_fp/profile")) > 3 * np.median(yaws("cfp_fp/frontal"))
    assert np.median(yaws("cfp_fp/profile")) > 3 * np.median(yaws("lfw"))
    with pytest.raises(UnknownNameError, match=r"nuisance profile 'cplwf'; did you mean 'cplfw'\? \(known: clean, "):
        sf.get_profile("cplwf")
    assert sf.get_profile("LFW") is sf.PROFILES["lfw"]


def test_render_is_a_pure_function_of_its_keys():
    a = sf.render_identity_image(3, 7, 2)
    assert a.shape == (112, 112, 3) and a.dtype == np.uint8
    assert np.array_equal(a, sf.render_identity_image(3, 7, 2))
    assert not np.array_equal(a, sf.render_identity_image(3, 7, 3))


def test_refuses_to_overwrite_without_force(tiny, tmp_path):
    out = tmp_path / "d"
    ms.main(["--output", str(out), "--workers", "1", "--targets", "lfw", *TINY])
    before = digests(out)
    with pytest.raises(FileExistsError, match="lfw.bin"):
        ms.main(["--output", str(out), "--workers", "1", "--targets", "lfw", "--seed", "4", *TINY])
    assert digests(out) == before
    ms.main(["--output", str(out), "--workers", "1", "--targets", "lfw", "--seed", "4", "--force", *TINY])
    assert digests(out)["lfw.bin"] != before["lfw.bin"]


@pytest.mark.parametrize("args, message", [
    (["--targets", "lfw,lwf"], "--targets: unknown lwf"),
    (["--pairs", "10"], "--pairs must be at least 20"),
    (["--eval-ids", "1"], "--eval-ids must be >= 2"),
    (["--quality", "0"], "--quality must be in 1..100"),
])
def test_bad_arguments_are_named(tmp_path, args, message):
    with pytest.raises(ValueError, match=message):
        ms.main(["--output", str(tmp_path / "x"), "--workers", "1", *TINY, *args])
    assert not (tmp_path / "x").exists()


def test_images_per_id_range():
    assert ms.parse_range("7") == (7, 7) and ms.parse_range("3-9") == (3, 9)
    counts = ms.images_per_identity(0, 200, (3, 9))
    assert counts.min() == 3 and counts.max() == 9
    assert np.array_equal(counts, ms.images_per_identity(0, 200, (3, 9)))
