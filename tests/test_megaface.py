"""MegaFace: devkit binary format, lists, noise removal, protocol, devkit runner, CLI end to end."""

from __future__ import annotations

import json
import math
import os
import stat
import struct
import sys

import cv2
import numpy as np
import pytest
import torch

from backbones import get_backbone
from eval.embedder import Embedder
from eval.megaface import devkit, megaface_eval, noises, protocol
from eval.megaface.features import (
    encode_bin,
    feature_path,
    l2_normalize,
    load_face,
    read_bin,
    read_landmarks_json,
    read_matrix,
    write_bin,
)
from eval.megaface.lists import (
    MegaFaceError,
    available_sizes,
    read_distractor_list,
    read_probe_list,
    write_distractor_list,
    write_probe_list,
)
from tools import make_synthetic_megaface
from utils.errors import DatasetError

# ---------------------------------------------------------------------------------------------
# binary matrix format


def test_bin_exact_header_bytes(tmp_path):
    feat = np.array([1.0, -2.5, 0.25], np.float32)
    data = encode_bin(feat)
    # (rows, cols, element size, CV_32F) as little-endian int32, then the floats
    assert data[:16] == bytes.fromhex("03000000" "01000000" "04000000" "05000000")
    assert data[16:] == struct.pack("<3f", 1.0, -2.5, 0.25)
    # what insightface's write_bin produces for the same vector (native = little-endian here)
    assert data == struct.pack("4i", 3, 1, 4, 5) + struct.pack("3f", *feat.tolist())
    path = str(tmp_path / "a.jpg_algo.bin")
    write_bin(path, feat)
    assert open(path, "rb").read() == data
    assert not os.path.exists(path + ".tmp")
    np.testing.assert_array_equal(read_bin(path), feat)
    assert read_matrix(path).shape == (3, 1)


def test_bin_round_trip_512():
    rng = np.random.default_rng(0)
    feat = rng.normal(size=512).astype(np.float32)
    data = encode_bin(feat)
    assert len(data) == 16 + 512 * 4
    rows, cols, size, typ = struct.unpack_from("<4i", data)
    assert (rows, cols, size, typ) == (512, 1, 4, 5)
    np.testing.assert_array_equal(np.frombuffer(data, "<f4", offset=16), feat)


def test_bin_errors_name_the_file(tmp_path):
    bad = tmp_path / "short.bin"
    bad.write_bytes(b"\x01\x00")
    with pytest.raises(MegaFaceError, match="short.bin: truncated header"):
        read_bin(str(bad))
    wrong = tmp_path / "double.bin"
    wrong.write_bytes(struct.pack("<4i", 2, 1, 8, 6) + struct.pack("<2d", 1, 2))
    with pytest.raises(MegaFaceError, match="double.bin: not a float32 matrix"):
        read_bin(str(wrong))
    cut = tmp_path / "cut.bin"
    cut.write_bytes(encode_bin(np.ones(4, np.float32))[:-4])
    with pytest.raises(MegaFaceError, match=r"cut.bin: header says 4x1 float32 "
                       r"\(16 bytes of data\) but the file has 12"):
        read_bin(str(cut))
    with pytest.raises(MegaFaceError, match="missing.bin: feature file not found"):
        read_bin(str(tmp_path / "missing.bin"))


def test_feature_path_mirrors_the_image_tree():
    assert feature_path("F/megaface", "375/37531198@N00/4174611825_0.jpg", "r50") == os.path.join(
        "F/megaface", "375/37531198@N00/4174611825_0.jpg_r50.bin")


# ---------------------------------------------------------------------------------------------
# lists


def test_lists(tmp_path):
    lists = str(tmp_path)
    write_probe_list(os.path.join(lists, "facescrub_features_list.json"),
                     ["A/A_1.png", "B/B_2.png"], ["A", "B"])
    probe = read_probe_list(os.path.join(lists, "facescrub_features_list.json"))
    assert probe.paths == ["A/A_1.png", "B/B_2.png"] and probe.ids == ["A", "B"]
    # without "id" the identity is the folder, as remove_noises.py takes it
    (tmp_path / "noid.json").write_text(json.dumps({"path": ["X_y/X_y_3.png"]}))
    assert read_probe_list(str(tmp_path / "noid.json")).ids == ["X_y"]
    write_distractor_list(lists, 10, [f"1/u/{i}_0.jpg" for i in range(10)])
    write_distractor_list(lists, 100, [f"1/u/{i}_0.jpg" for i in range(100)])
    write_distractor_list(lists, 10, ["x"], set_index=2)
    assert available_sizes(lists) == [10, 100]
    assert len(read_distractor_list(lists, 100)) == 100
    with pytest.raises(MegaFaceError,
                       match=r"megaface_features_list.json_1000_1.*available.*\[10, 100\]"):
        read_distractor_list(lists, 1000)
    (tmp_path / "bad.json").write_text(json.dumps({"id": ["A"], "path": ["A/1.png", "A/2.png"]}))
    with pytest.raises(MegaFaceError, match="bad.json: 'id' has 1 entries but 'path' has 2"):
        read_probe_list(str(tmp_path / "bad.json"))


# ---------------------------------------------------------------------------------------------
# noise removal


def test_noise_list_formats(tmp_path):
    fs = tmp_path / "facescrub_noises.txt"
    fs.write_text("#comment\nAaron_Eckhart_136.png\n\nAdam_McKay_468.png\n")
    mf = tmp_path / "megaface_noises.txt"
    mf.write_text("#comment\n375/37531198@N00/4174611825_0.jpg\n"
                  "7\t925/92596048@N00/3910487430_2.jpg\n")
    assert noises.read_facescrub_noises(str(fs)) == {"Aaron_Eckhart_136.png", "Adam_McKay_468.png"}
    assert noises.read_megaface_noises(str(mf)) == {
        "375/37531198@N00/4174611825_0.jpg", "925/92596048@N00/3910487430_2.jpg"}
    assert noises.facescrub_noise_key("Aaron_Eckhart/Aaron_Eckhart_136.png") == (
        "Aaron_Eckhart_136.png")
    assert noises.megaface_noise_key("root/375/u/1_0.jpg") == "375/u/1_0.jpg"


def test_noise_removal_rule():
    probe_paths = ["A/A_1.png", "A/A_2.png", "A/A_3.png", "B/B_1.png", "B/B_2.png"]
    ids = ["A", "A", "A", "B", "B"]
    probes = np.array([[1, 0], [0, 1], [0.5, 0.5], [0.6, 0.8], [-1, 0]], np.float32)
    dist_paths = ["1/u/1_0.jpg", "2/v/2_0.jpg", "3/w/3_1.jpg"]
    dists = np.array([[1, 0], [0, -1], [0.8, 0.6]], np.float32)
    fs_noise, mf_noise = {"A_3.png", "B_2.png"}, {"2/v/2_0.jpg"}
    p, d, stats = noises.remove_noises(
        probes, ids, probe_paths, dists, dist_paths, fs_noise, mf_noise, seed=3)
    assert (stats.facescrub_noisy, stats.megaface_noisy) == (2, 1)
    assert p.shape == (5, 3) and d.shape == (3, 3)
    # clean features: unchanged, extra dimension 0
    np.testing.assert_array_equal(p[[0, 1, 3]], np.float32([[1, 0, 0], [0, 1, 0], [0.6, 0.8, 0]]))
    # noisy distractor: same D values, extra value 100; others 0
    np.testing.assert_array_equal(d, np.float32([[1, 0, 0], [0, -1, 100], [0.8, 0.6, 0]]))
    # noisy probe: normalise(sum of the identity's clean features + U(-0.001, 0.001) on the D dims)
    rng = np.random.default_rng(3)
    g_a, g_b = rng.uniform(-0.001, 0.001, 2), rng.uniform(-0.001, 0.001, 2)
    want_a = np.array([1 + g_a[0], 1 + g_a[1], 0])
    want_b = np.array([0.6 + g_b[0], 0.8 + g_b[1], 0])
    np.testing.assert_allclose(p[2], want_a / np.linalg.norm(want_a), rtol=1e-6)
    np.testing.assert_allclose(p[4], want_b / np.linalg.norm(want_b), rtol=1e-6)
    assert abs(p[2, 0] - math.sqrt(0.5)) < 1e-3  # ~ the centre direction (1, 1)/sqrt(2)
    # the extra 100 puts the noisy distractor out of reach even of a probe equal to it
    same_as_noisy = torch.tensor([[0, -1, 0]], dtype=torch.float32)
    scores = protocol.pair_scores(same_as_noisy, torch.tensor(d)).numpy()
    assert scores[0, 1] == pytest.approx(-10000.0)
    # every image of an identity listed as noise: no centre to rebuild it from
    with pytest.raises(MegaFaceError, match="identity 'B'"):
        noises.remove_noises(
            probes, ids, probe_paths, dists, dist_paths, fs_noise | {"B_1.png"}, set())


def test_noise_tree_cli(tmp_path):
    lists = tmp_path / "templatelists"
    lists.mkdir()
    probe_paths, ids = ["A/A_1.png", "A/A_2.png"], ["A", "A"]
    write_probe_list(str(lists / "facescrub_features_list.json"), probe_paths, ids)
    write_distractor_list(str(lists), 2, ["1/u/1_0.jpg", "1/u/2_0.jpg"])
    src = tmp_path / "feat"
    for rel, vec in zip(probe_paths, ([1, 0], [0, 1])):
        os.makedirs(os.path.dirname(feature_path(str(src / "facescrub"), rel, "m")), exist_ok=True)
        write_bin(feature_path(str(src / "facescrub"), rel, "m"), np.array(vec, np.float32))
    for rel, vec in zip(["1/u/1_0.jpg", "1/u/2_0.jpg"], ([0.6, 0.8], [1, 0])):
        os.makedirs(os.path.dirname(feature_path(str(src / "megaface"), rel, "m")), exist_ok=True)
        write_bin(feature_path(str(src / "megaface"), rel, "m"), np.array(vec, np.float32))
    (tmp_path / "fs.txt").write_text("#\nA_2.png\n")
    (tmp_path / "mf.txt").write_text("#\n1/u/2_0.jpg\n")
    argv = ["--feature-dir-input", str(src), "--feature-dir-out", str(tmp_path / "clean"),
            "--algo", "m", "--templatelists", str(lists), "--sizes", "2",
            "--facescrub-noises", str(tmp_path / "fs.txt"),
            "--megaface-noises", str(tmp_path / "mf.txt")]
    assert noises.main(argv) == 0
    out = tmp_path / "clean"
    def clean(sub, rel):
        return read_bin(feature_path(str(out / sub), rel, "m"))

    np.testing.assert_array_equal(clean("facescrub", "A/A_1.png"), [1, 0, 0])
    # the noisy probe becomes its identity's (one-image) centre, +-0.001, normalised
    np.testing.assert_allclose(clean("facescrub", "A/A_2.png"), [1, 0, 0], atol=2e-3)
    np.testing.assert_array_equal(clean("megaface", "1/u/1_0.jpg"), np.float32([0.6, 0.8, 0]))
    np.testing.assert_array_equal(clean("megaface", "1/u/2_0.jpg"), [1, 0, 100])
    with pytest.raises(FileExistsError, match="--force"):
        noises.main(argv)


# ---------------------------------------------------------------------------------------------
# protocol


def _hand_scores():
    ids = ["A", "A", "B", "B"]
    pp = np.full((4, 4), -9.0, np.float32)
    pp[0, 1] = pp[1, 0] = 0.9
    pp[2, 3] = pp[3, 2] = 0.5
    pd = np.array([[0.95, 0.2, 0.1], [0.3, 0.2, 0.1], [0.6, 0.55, 0.1], [0.4, 0.5, 0.1]],
                  np.float32)
    return pp, pd, ids


def test_identification_hand_case():
    pp, pd, ids = _hand_scores()
    # pairs (probe -> gallery): 0->1: 0.95 above 0.9 -> rank 2; 1->0: none above -> 1;
    # 2->3: 0.6, 0.55 above 0.5 -> rank 3; 3->2: 0.5 ties 0.5 (ties go to the match) -> 1
    res = protocol.evaluate_from_scores(pp, pd, ids, max_rank=3, fars=[0.25])
    assert res["genuine_pairs"] == 4
    assert res["cmc"]["rates"] == pytest.approx([0.5, 0.75, 1.0])
    assert res["rank1"] == pytest.approx(0.5)
    # with max_rank 2 the rank-3 pair is simply beyond the curve
    short = protocol.evaluate_from_scores(pp, pd, ids, max_rank=2, fars=[0.25])
    assert short["cmc"]["rates"] == pytest.approx([0.5, 0.75])
    pi, gi = protocol.genuine_pairs(ids)
    assert sorted(zip(pi.tolist(), gi.tolist())) == [(0, 1), (1, 0), (2, 3), (3, 2)]


def test_tar_at_far_hand_case():
    pp, pd, ids = _hand_scores()
    # negatives descending: 0.95 0.6 0.55 0.5 0.4 0.3 0.2 0.2 0.1 0.1 0.1 0.1; positives 0.9, 0.5
    res = protocol.evaluate_from_scores(pp, pd, ids, max_rank=3, fars=[1e-6, 1 / 12, 0.25, 0.34])
    v = res["verification"]
    assert (v["positives"], v["negatives"]) == (2, 12)
    assert v["tar"] == pytest.approx([0.0, 0.5, 0.5, 1.0])
    assert v["threshold"] == pytest.approx([0.95, 0.6, 0.5, 0.4])
    assert v["achieved_far"] == pytest.approx([0.0, 1 / 12, 3 / 12, 4 / 12])
    with pytest.raises(ValueError, match="only 2 were kept"):
        protocol.tar_at_far(np.array([0.5]), np.array([0.9, 0.8]), 100, [0.05])


def _unit(deg):
    return np.stack([np.cos(np.deg2rad(deg)), np.sin(np.deg2rad(deg))], 1).astype(np.float32)


@pytest.mark.parametrize("chunk", [1, 2, 16])
def test_chunked_protocol_on_hand_features(chunk):
    # probes A at 0 and 10 degrees, B at 90 and 94; distractors at 5, 101, 180 degrees.
    probes, ids = _unit([0, 10, 90, 94]), ["A", "A", "B", "B"]
    dists = _unit([5, 101, 180])
    # A0->A1 (10 deg apart): distractor 5 is 5 deg from A0 -> rank 2; A1->A0 likewise -> 2;
    # B0->B1 (4 deg): nearest distractor 11 deg -> 1; B1->B0: 7 deg -> 1.
    # negatives by angle: 5 5 7 11 85 86 89 90 91 101 170 180; positives 10 and 4 degrees.
    res = protocol.evaluate(probes, ids, dists, max_rank=5, fars=[1 / 12, 2 / 12, 3 / 12],
                            chunk_size=chunk)
    assert res["cmc"]["rates"] == pytest.approx([0.5, 1.0, 1.0, 1.0, 1.0])
    assert res["verification"]["tar"] == pytest.approx([0.5, 0.5, 1.0])
    cos = 1 + np.array(res["verification"]["threshold"]) / 2  # score = 2 cos - 2 on unit vectors
    np.testing.assert_allclose(cos, np.cos(np.deg2rad([5, 7, 11])), atol=1e-5)


def test_chunked_equals_full_matrices():
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(6, 24))
    ids = [f"id{i % 6}" for i in range(30)]
    probes = l2_normalize(centres[[i % 6 for i in range(30)]] + 0.9 * rng.normal(size=(30, 24)))
    dists = l2_normalize(rng.normal(size=(500, 24)))
    fars = [1e-4, 1e-3, 1e-2]
    a = protocol.evaluate(probes, ids, dists, max_rank=20, fars=fars, chunk_size=37)
    full = protocol.evaluate_from_scores(
        protocol.pair_scores(torch.tensor(probes), torch.tensor(probes)).numpy(),
        protocol.pair_scores(torch.tensor(probes), torch.tensor(dists)).numpy(), ids,
        max_rank=20, fars=fars)
    assert 0.0 < a["rank1"] < 1.0  # a non-trivial case
    assert a["cmc"]["rates"] == pytest.approx(full["cmc"]["rates"])
    assert a["verification"]["tar"] == pytest.approx(full["verification"]["tar"])
    assert a["verification"]["threshold"] == pytest.approx(
        full["verification"]["threshold"], abs=1e-5)
    assert np.all(np.diff(a["cmc"]["rates"]) >= 0)
    # rank-1 by brute force: a pair is correct when no distractor beats the genuine cosine
    cos_pd = probes @ dists.T
    hits = [np.all(cos_pd[p] <= probes[p] @ probes[g] + 1e-6)
            for p in range(30) for g in range(30) if p != g and ids[p] == ids[g]]
    assert a["rank1"] == pytest.approx(np.mean(hits))


def test_top_values_stream():
    rng = np.random.default_rng(2)
    data = rng.normal(size=1000).astype(np.float32)
    top = protocol.TopValues(17)
    for s in range(0, 1000, 64):
        top.update(torch.tensor(data[s:s + 64]))
    np.testing.assert_array_equal(top.values.numpy(), np.sort(data)[::-1][:17])
    assert protocol.negatives_to_keep([1e-6, 1e-3], 10**6) == 1001


# ---------------------------------------------------------------------------------------------
# synthetic tree, image loading


SYNTH_ARGS = ["--identities", "3", "--images-per-id", "3", "--distractors", "12", "--sizes", "10",
              "12", "--unaligned", "1", "--facescrub-noises", "1", "--megaface-noises", "1"]


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    root = tmp_path_factory.mktemp("megaface_synth")
    make_synthetic_megaface.main(["--output", str(root), *SYNTH_ARGS])
    return root


def test_synthetic_tree(synth, tmp_path):
    lists = synth / "devkit" / "templatelists"
    probe = read_probe_list(str(lists / "facescrub_features_list.json"))
    assert len(probe.paths) == 9 and len(set(probe.ids)) == 3
    assert available_sizes(str(lists)) == [10, 12]
    d10, d12 = read_distractor_list(str(lists), 10), read_distractor_list(str(lists), 12)
    assert d12[:10] == d10
    manifest = json.loads((synth / "manifest.json").read_text())
    assert len(manifest["unaligned"]) == 2 and len(manifest["megaface_noises"]) == 1
    listed = noises.read_megaface_noises(str(synth / "megaface_noises.txt"))
    assert listed == set(manifest["megaface_noises"])
    for rel in manifest["unaligned"]:
        root = synth / ("facescrub_images" if rel in probe.paths else "megaface_images")
        img = cv2.imread(str(root / rel))
        assert img.shape[:2] != (112, 112)
        lmk = read_landmarks_json(str(root / rel) + ".json")
        assert lmk.shape == (5, 2)
        assert load_face(str(root / rel)).shape == (112, 112, 3)
    # aligned images load as they are (RGB)
    rel = next(p for p in probe.paths if p not in manifest["unaligned"])
    np.testing.assert_array_equal(load_face(str(synth / "facescrub_images" / rel)),
                                  cv2.imread(str(synth / "facescrub_images" / rel))[:, :, ::-1])
    # same seed -> same bytes; refuses to overwrite
    again = tmp_path / "again"
    make_synthetic_megaface.main(["--output", str(again), *SYNTH_ARGS])
    for rel in (probe.paths[0], manifest["unaligned"][0]):
        sub = "facescrub_images" if rel in probe.paths else "megaface_images"
        assert (again / sub / rel).read_bytes() == (synth / sub / rel).read_bytes()
    with pytest.raises(FileExistsError, match="--force"):
        make_synthetic_megaface.main(["--output", str(again)])


def test_unaligned_image_without_landmarks_is_refused(tmp_path):
    cv2.imwrite(str(tmp_path / "big.jpg"), np.zeros((150, 140, 3), np.uint8))
    with pytest.raises(DatasetError, match=r"big.jpg: image is 140x150, not an aligned "
                       r"112x112 crop.*big.jpg.json"):
        load_face(str(tmp_path / "big.jpg"))
    (tmp_path / "big.jpg.json").write_text(json.dumps({"bounding_box": {"x": 1}}))
    with pytest.raises(MegaFaceError, match="big.jpg.json: no 5-point 'landmarks'"):
        load_face(str(tmp_path / "big.jpg"))


# ---------------------------------------------------------------------------------------------
# end to end


class CountingEmbedder:
    """An Embedder that counts the images it embeds (to see extraction being skipped)."""

    def __init__(self, embedder):
        self.embedder, self.images = embedder, 0

    def __call__(self, images):
        self.images += len(images)
        return self.embedder(images)


@pytest.fixture(scope="module")
def tiny_backbone():
    torch.manual_seed(0)
    return get_backbone("iresnet18", width=8, num_features=32).eval()


@pytest.fixture(scope="module")
def tiny_net():
    """A tiny random conv net (32-d output): the pipeline, not the network, is under test here."""
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 5, stride=4), torch.nn.PReLU(8), torch.nn.AdaptiveAvgPool2d(4),
        torch.nn.Flatten(), torch.nn.Linear(128, 32)).eval()


def _args(synth, out, *extra):
    return megaface_eval.build_parser().parse_args([
        "--weights", "tiny-random", "--algo", "tiny",
        "--facescrub-root", str(synth / "facescrub_images"),
        "--megaface-root", str(synth / "megaface_images"), "--output", str(out),
        "--num-workers", "0", "--batch-size", "8", "--max-rank", "12", "--fars", "0.01", "0.1",
        "--chunk-size", "5", *extra])


def test_end_to_end(synth, tmp_path, tiny_net):
    out = tmp_path / "out"
    emb = CountingEmbedder(Embedder.from_module(tiny_net, device="cpu", batch_size=8))
    res = megaface_eval.run(_args(synth, out), emb)
    lists = synth / "devkit" / "templatelists"
    probe = read_probe_list(str(lists / "facescrub_features_list.json"))
    dists = read_distractor_list(str(lists), 12)
    assert emb.images == 2 * (9 + 12)  # every image and its mirror, once

    # features in the devkit layout, header (32, 1, 4, 5)
    for root, rels in (("facescrub", probe.paths), ("megaface", dists)):
        for rel in rels:
            path = feature_path(str(out / "features" / root), rel, "tiny")
            assert struct.unpack_from("<4i", open(path, "rb").read()) == (32, 1, 4, 5)
    # a feature is normalise(emb(crop) + emb(mirrored crop)), for aligned and unaligned images
    manifest = json.loads((synth / "manifest.json").read_text())
    for rel in (probe.paths[0], next(p for p in manifest["unaligned"] if p in probe.paths)):
        crop = load_face(str(synth / "facescrub_images" / rel))[None]
        want = l2_normalize(emb.embedder(crop) + emb.embedder(crop[:, :, ::-1].copy()))[0]
        got = read_bin(feature_path(str(out / "features" / "facescrub"), rel, "tiny"))
        np.testing.assert_allclose(got, want, atol=1e-5)

    # results: recomputed here from the feature files, the noise lists and the protocol
    def feats(sub, rels):
        root = str(out / "features" / sub)
        return np.stack([read_bin(feature_path(root, r, "tiny")) for r in rels])

    pc, dc, _ = noises.remove_noises(
        feats("facescrub", probe.paths), probe.ids, probe.paths, feats("megaface", dists), dists,
        noises.read_facescrub_noises(str(synth / "facescrub_noises.txt")),
        noises.read_megaface_noises(str(synth / "megaface_noises.txt")), seed=0)
    saved = json.loads((out / "megaface_tiny.json").read_text())
    assert set(saved["sizes"]) == {"10", "12"}
    assert saved["noise_removal"]["facescrub_replaced"] == 1
    assert saved["noise_removal"]["megaface_replaced"] == 1
    assert saved["feature_dim"] == 33
    for size, n in (("10", 10), ("12", 12)):
        want = protocol.evaluate(pc, probe.ids, dc[:n], max_rank=12, fars=[0.01, 0.1])
        got = saved["sizes"][size]
        assert got["distractors"] == n and got["genuine_pairs"] == 3 * 3 * 2
        assert got["cmc"]["rates"] == pytest.approx(want["cmc"]["rates"])
        assert got["verification"]["tar"] == pytest.approx(want["verification"]["tar"])
        assert 0.0 <= got["rank1"] <= 1.0 and got["cmc"]["rates"][-1] == pytest.approx(1.0)
    assert res["sizes"]["12"]["rank1"] == saved["sizes"]["12"]["rank1"]
    for png in ("cmc_tiny.png", "roc_tiny.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # re-run: results exist -> refused; --overwrite-results reuses every feature
    with pytest.raises(FileExistsError, match="--overwrite-results"):
        megaface_eval.run(_args(synth, out), emb)
    emb.images = 0
    again = megaface_eval.run(_args(synth, out, "--overwrite-results"), emb)
    assert emb.images == 0
    assert again["extraction"]["megaface"] == {"total": 12, "extracted": 0, "skipped": 12}
    assert again["sizes"] == saved["sizes"]
    # other settings under the same algo name are refused (stale features would be reused)
    with pytest.raises(MegaFaceError, match="another --algo, or --force"):
        megaface_eval.run(_args(synth, out, "--overwrite-results", "--no-flip"), emb)
    # --force re-extracts
    megaface_eval.run(_args(synth, out, "--force", "--no-flip"), emb)
    assert emb.images == 9 + 12


def test_cli_main_with_a_checkpoint(synth, tmp_path, tiny_backbone, capsys):
    from utils.checkpoint import export_backbone

    weights = tmp_path / "tiny_r18.pt"
    export_backbone(tiny_backbone, weights, "iresnet18", {"width": 8, "num_features": 32})
    out = tmp_path / "cli"
    argv = ["--weights", str(weights), "--facescrub-root", str(synth / "facescrub_images"),
            "--megaface-root", str(synth / "megaface_images"), "--output", str(out),
            "--num-workers", "0", "--sizes", "10", "--max-rank", "5", "--fars", "0.1",
            "--device", "cpu"]
    assert megaface_eval.main(argv) == 0
    table = capsys.readouterr().out
    assert "rank-1 %" in table and "TAR@FAR=0.1 %" in table
    saved = json.loads((out / "megaface_tiny_r18.json").read_text())  # algo from the file name
    assert list(saved["sizes"]) == ["10"] and saved["feature_dim"] == 33
    with pytest.raises(FileExistsError, match="--overwrite-results"):  # results exist: refused
        megaface_eval.main(argv)
    with pytest.raises(SystemExit) as e:
        megaface_eval.main(["--help"])
    assert e.value.code == 0


# ---------------------------------------------------------------------------------------------
# official devkit runner (a stand-in devkit: the real one is closed Linux binaries)

FAKE_RUN_EXPERIMENT = r"""
import json, os, sys
out_root = sys.argv[4]
sizes = [int(s) for s in sys.argv[sys.argv.index("-s") + 1:sys.argv.index("-p")]]
os.makedirs(out_root, exist_ok=True)
with open(os.path.join(out_root, "call.json"), "w") as f:
    json.dump({"argv": sys.argv[1:], "cwd": os.getcwd()}, f)
alg = sys.argv[3].split(".")[0].strip("_")
for s in sizes:
    with open(os.path.join(out_root, "cmc_facescrub_megaface_%s_%d_1.json" % (alg, s)), "w") as f:
        json.dump({"cmc": [[0, 1, 2], [0.5 + s / 1000.0, 0.8, 0.9]],
                   "roc": [[1e-6, 1e-3], [0.4, 0.9]]}, f)
"""


def _fake_devkit(root, executable=True):
    for rel in devkit.REQUIRED:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(FAKE_RUN_EXPERIMENT if rel.endswith(".py") else "#!/bin/sh\n")
        if rel.startswith("bin/") and executable:
            path.chmod(path.stat().st_mode | stat.S_IXUSR)
    (root / "templatelists").mkdir(exist_ok=True)
    return root


def test_devkit_runner(tmp_path):
    kit = _fake_devkit(tmp_path / "devkit")
    cmd = devkit.build_command(str(kit), "F/megaface", "F/facescrub", "r50", "R", [10, 100],
                               "L/facescrub_features_list.json", "L", python="python2",
                               delete_matrices=True)
    assert cmd[0] == "python2" and cmd[2].endswith(os.path.join("experiments", "run_experiment.py"))
    assert cmd[3:] == [os.path.abspath("F/megaface"), os.path.abspath("F/facescrub"), "_r50.bin",
                       os.path.abspath("R"), "-s", "10", "100", "-p",
                       os.path.abspath("L/facescrub_features_list.json"),
                       "-dlp", os.path.abspath("L"), "-d"]
    res = devkit.run_devkit(str(kit), "F/megaface", "F/facescrub", "r50", str(tmp_path / "res"),
                            [10, 1000], "L/p.json", "L", python=sys.executable)
    call = json.loads((tmp_path / "res" / "call.json").read_text())
    assert call["cwd"] == str(kit / "experiments")  # its ../bin paths resolve from there
    assert call["argv"][2] == "_r50.bin"
    assert res["10"]["rank1"] == pytest.approx(0.51) and res["1000"]["rank1"] == pytest.approx(1.5)


def test_devkit_missing_parts(tmp_path):
    with pytest.raises(devkit.DevkitError, match="MegaFace devkit folder not found"):
        devkit.check_devkit(str(tmp_path / "nope"))
    kit = _fake_devkit(tmp_path / "kit")
    (kit / "bin" / "FuseResults").unlink()
    (kit / "models" / "jb_identity.bin").unlink()
    with pytest.raises(devkit.DevkitError, match="missing bin/FuseResults, models/jb_identity.bin"):
        devkit.check_devkit(str(kit))
    kit2 = _fake_devkit(tmp_path / "kit2", executable=False)
    with pytest.raises(devkit.DevkitError, match="not executable; run: chmod"):
        devkit.check_devkit(str(kit2))


def test_cli_devkit(synth, tmp_path, tiny_net):
    emb = CountingEmbedder(Embedder.from_module(tiny_net, device="cpu", batch_size=8))
    # a missing devkit is reported before any extraction
    with pytest.raises(devkit.DevkitError):
        megaface_eval.run(_args(synth, tmp_path / "o1", "--devkit", str(tmp_path / "none"),
                                "--templatelists", str(synth / "devkit" / "templatelists")), emb)
    assert emb.images == 0
    kit = _fake_devkit(tmp_path / "devkit")
    out = tmp_path / "o2"
    res = megaface_eval.run(_args(synth, out, "--devkit", str(kit),
                                  "--devkit-python", sys.executable,
                                  "--templatelists", str(synth / "devkit" / "templatelists")), emb)
    call = json.loads((out / "devkit_tiny" / "call.json").read_text())
    # the devkit reads the noise-cleaned tree
    assert call["argv"][0] == str(out / "features_clean" / "megaface")
    assert call["argv"][call["argv"].index("-s") + 1:call["argv"].index("-p")] == ["10", "12"]
    noisy = json.loads((synth / "manifest.json").read_text())["megaface_noises"][0]
    clean = read_bin(feature_path(str(out / "features_clean" / "megaface"), noisy, "tiny"))
    assert clean.shape == (33,) and clean[-1] == 100.0
    assert res["devkit"]["12"]["rank1"] == pytest.approx(0.512)


def test_cli_run_folder_each_step_cached_and_best(synth, tmp_path, capsys, monkeypatch, one_torch_thread):
    from eval.embedder import Embedder

    run = tmp_path / "run"
    run.mkdir()
    for step, seed in ((100, 1), (200, 2)):
        torch.manual_seed(seed)
        model = get_backbone("iresnet18", width=8, num_features=32)
        torch.save({f"backbone.{k}": v for k, v in model.state_dict().items()}, run / f"{step}model.pth")
    loads = []
    real_load = Embedder.load.__func__
    spy = classmethod(lambda cls, *a, **k: loads.append(a[0]) or real_load(cls, *a, **k))
    monkeypatch.setattr(Embedder, "load", spy)
    out = tmp_path / "out"
    argv = ["--weights", str(run), "--facescrub-root", str(synth / "facescrub_images"),
            "--megaface-root", str(synth / "megaface_images"), "--output", str(out),
            "--num-workers", "0", "--sizes", "10", "--max-rank", "5", "--fars", "0.1", "--device", "cpu"]
    assert megaface_eval.main(argv) == 0
    summary = json.loads((out / "megaface_steps.json").read_text())
    assert [r["name"] for r in summary["steps"]] == ["100model.pth", "200model.pth"]
    assert summary["metrics"] == ["rank-1@10", "TAR@0.1@10"]
    for row in summary["steps"]:  # each step's numbers are its own result file's
        one = json.loads((out / f"megaface_{row['step']}model.json").read_text())["sizes"]["10"]
        assert row["scores"] == {"rank-1@10": one["rank1"], "TAR@0.1@10": one["verification"]["tar"][0]}
    for metric in summary["metrics"]:
        values = {r["step"]: r["scores"][metric] for r in summary["steps"]}
        best = max(values, key=lambda s: (values[s], -s))
        assert summary["best"][metric] == {"step": best, "name": f"{best}model.pth", "value": values[best]}
    assert "200model.pth" in capsys.readouterr().out
    loads.clear()
    assert megaface_eval.main(argv) == 0 and loads == []  # every step from the cache
    assert json.loads((out / "megaface_steps.json").read_text())["steps"] == summary["steps"]
