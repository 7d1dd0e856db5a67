"""eval/all_to_all: exact TAR at FAR over all pairs (brute force, ties, blocking and order), groups, cross, CLI."""

import json
import math
import os
from fractions import Fraction

import cv2
import numpy as np
import pytest
import torch

from eval import all_to_all as a2a
from eval.all_to_all import (
    AllToAllError,
    all_to_all_table,
    count_pairs,
    cross_table,
    group_tables,
    quantise_features,
    tar_at_far,
)
from utils.errors import UserError

FARS = (1e-1, 1e-2, 1e-3, 1e-4)


def clustered(n, d, ids, seed=0, spread=1.0):
    """n features of ``ids`` identities (a centre each plus noise), labels shuffled among the images."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, ids, n)
    centres = rng.normal(size=(ids, d))
    return (centres[labels] * spread + rng.normal(size=(n, d))).astype(np.float32), labels


def brute_force(scores, same, fars):
    """The SPEC's definition on a full score matrix (upper triangle) or a cross matrix (``same`` given)."""
    pos, neg = scores[same], np.sort(scores[~same])[::-1]
    out = {}
    for far in fars:
        k = math.floor(Fraction(repr(far)) * len(neg))
        t = neg[k]
        out[far] = (float((pos > t).sum() / len(pos)), float(t), float((neg > t).sum() / len(neg)))
    return out


def brute_all(features, labels, fars, quantise=True):
    q = quantise_features(features) if quantise else features / np.linalg.norm(features, axis=1, keepdims=True)
    iu = np.triu_indices(len(q), 1)
    return brute_force((q @ q.T)[iu], (labels[:, None] == labels[None, :])[iu], fars)


def as_tuples(table):
    return {r.far: (r.tar, r.threshold, r.far_reached) for r in table.rows}


# -- exactness -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "d", "ids", "block", "max_candidates"), [
    (300, 16, 60, 64, a2a.DEFAULT_MAX_CANDIDATES),
    (1000, 8, 100, 97, a2a.DEFAULT_MAX_CANDIDATES),
    (1000, 8, 100, 1000, 0),  # every window refined down to a single value
    (2000, 32, 400, 512, 40),  # crowded bins refined once or twice
])
def test_equals_brute_force(n, d, ids, block, max_candidates):
    feats, labels = clustered(n, d, ids)
    fars = [f for f in (*FARS, 1e-5) if f * n * (n - 1) / 2 >= 1]
    table = all_to_all_table(feats, labels, fars, block_size=block, device="cpu", max_candidates=max_candidates)
    assert as_tuples(table) == brute_all(feats, labels, fars)
    n_pos, n_neg = count_pairs(labels)
    assert (table.n_pos, table.n_neg) == (n_pos, n_neg) and n_pos + n_neg == n * (n - 1) // 2
    for row in table.rows:
        assert row.false_accepts <= math.floor(row.far * n_neg) and row.true_accepts == round(row.tar * n_pos)


def test_quantised_scores_are_the_float64_cosines_to_1e6():
    """The 2^-26 grid moves a cosine by ~1e-8: thresholds agree with unrounded float64 cosines."""
    feats, labels = clustered(800, 64, 100, seed=3)
    exact = brute_all(feats.astype(np.float64), labels, FARS, quantise=False)
    for far, (tar, threshold, _) in as_tuples(all_to_all_table(feats, labels, FARS, block_size=256)).items():
        assert threshold == pytest.approx(exact[far][1], abs=1e-6) and tar == pytest.approx(exact[far][0], abs=2e-3)
    q = quantise_features(feats)
    unit = feats / np.linalg.norm(feats.astype(np.float64), axis=1, keepdims=True)
    assert np.abs(q - unit).max() <= 2.0**-27 and np.array_equal(q * 2**26, np.rint(q * 2**26))


def test_same_bits_for_any_block_size_and_image_order():
    feats, labels = clustered(600, 24, 80, seed=1)
    fars = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5)
    ref = all_to_all_table(feats, labels, fars, block_size=600)
    perm = np.random.default_rng(5).permutation(600)
    for block, order in [(37, None), (150, None), (256, None), (1000, None), (64, perm), (600, perm[::-1])]:
        f, lab = (feats, labels) if order is None else (feats[order], labels[order])
        table = all_to_all_table(f, lab, fars, block_size=block)
        assert table.rows == ref.rows and table.roc == ref.roc  # dataclass equality: bit for bit


def test_quantisation_is_row_by_row_across_its_chunks():
    """A row's grid value does not depend on the other rows (chunks of 2^16 rows included)."""
    x = np.random.default_rng(9).normal(size=(70_000, 4)).astype(np.float32)
    perm = np.random.default_rng(1).permutation(len(x))
    assert np.array_equal(quantise_features(x)[perm], quantise_features(x[perm]))


def test_ties_at_the_threshold_follow_the_spec():
    """Duplicated images make runs of equal scores: the threshold is the (k+1)-th largest, accepts are > it."""
    base, base_labels = clustered(40, 6, 10, seed=2)
    feats = np.repeat(base, 5, axis=0)  # every score repeated 25 times (and 5-way identical rows)
    labels = np.concatenate([base_labels, base_labels + 100, base_labels, base_labels + 200, base_labels])
    labels = labels[np.argsort(np.tile(np.arange(40), 5), kind="stable")]  # copies of an image: mixed labels
    fars = (0.3, 1e-1, 5e-2, 1e-2, 1e-3, 1e-4)
    table = all_to_all_table(feats, labels, fars, block_size=64, max_candidates=10)
    assert as_tuples(table) == brute_all(feats, labels, fars)
    assert any(r.far_reached < r.far * 0.9 for r in table.rows)  # a tie straddled k: the FAR reached is below


def test_hand_case():
    """Four images on a circle: cos 1 (same id), 0, -1 ... counted by hand."""
    feats = np.array([[1, 0], [1, 0], [0, 1], [-1, 0]], np.float32)
    labels = np.array([0, 0, 1, 2])
    # pairs: (0,1) pos 1.0; negatives (0,2) 0, (0,3) -1, (1,2) 0, (1,3) -1, (2,3) 0
    result = tar_at_far(feats, labels, [0.2, 0.5], block_size=3)
    # FAR 0.2: k = 1, threshold = the 2nd largest negative = 0; 1.0 > 0 accepted
    # FAR 0.5: k = 2, threshold = the 3rd largest negative = 0 too
    assert result == {0.2: (1.0, 0.0), 0.5: (1.0, 0.0)}
    table = all_to_all_table(feats, labels, [0.2, 0.5])
    assert [r.far_reached for r in table.rows] == [0.0, 0.0]
    assert tar_at_far(feats * 7, labels, [0.8]) == {0.8: (1.0, -1.0)}  # normalised by the function


# -- groups and cross pairs ----------------------------------------------------------------------


def test_group_tables_are_the_tables_of_the_groups_subsets():
    feats, labels = clustered(500, 12, 60, seed=4)
    groups = np.array(["asian", "black", "white", None, ""], dtype=object)[np.arange(500) % 5]
    tables = group_tables(feats, labels, list(groups), (1e-1, 1e-2, 1e-3), block_size=128)
    assert list(tables) == ["asian", "black", "white"]
    for name, table in tables.items():
        rows = groups == name
        assert as_tuples(table) == brute_all(feats[rows], labels[rows], (1e-1, 1e-2, 1e-3))
        assert table.sizes == (100,)


def test_cross_table_equals_brute_force_over_probe_x_gallery():
    feats, labels = clustered(700, 10, 50, seed=6)
    probe, gallery = feats[:300], feats[300:] + 0.5  # another condition (e.g. masks)
    fars = (1e-1, 1e-2, 1e-3, 1e-4)
    table = cross_table(probe, labels[:300], gallery, labels[300:], fars, block_size=77, max_candidates=30)
    qp, qg = quantise_features(probe), quantise_features(gallery)
    expected = brute_force(qp @ qg.T, labels[:300, None] == labels[None, 300:], fars)
    assert as_tuples(table) == expected and table.sizes == (300, 400)
    assert table.n_pos + table.n_neg == 300 * 400
    perm = np.random.default_rng(0).permutation(400)
    again = cross_table(probe, labels[:300], gallery[perm], labels[300:][perm], fars, block_size=128)
    assert again.rows == table.rows
    # string identities are compared by name
    names = np.array([f"id{x}" for x in labels])
    assert cross_table(probe, names[:300], gallery, names[300:], fars).rows == table.rows


# -- errors --------------------------------------------------------------------------------------


def test_errors_name_the_value():
    feats, labels = clustered(50, 4, 10)
    n_neg = count_pairs(labels)[1]
    for far in (0, 1, 1.5, -0.1, float("nan")):
        with pytest.raises(AllToAllError, match="outside"):
            tar_at_far(feats, labels, [far])
    with pytest.raises(AllToAllError, match=rf"FAR 1e-05 cannot be reached with {n_neg} negative pairs.*1/{n_neg}"):
        tar_at_far(feats, labels, [1e-1, 1e-5])
    with pytest.raises(AllToAllError, match="50 feature rows but 49 labels"):
        tar_at_far(feats, labels[:49], [0.1])
    bad = feats.copy()
    bad[7, 2] = np.nan
    with pytest.raises(AllToAllError, match="first row 7"):
        tar_at_far(bad, labels, [0.1])
    bad[7] = 0
    with pytest.raises(AllToAllError, match="row 7 is all zeros"):
        tar_at_far(bad, labels, [0.1])
    with pytest.raises(AllToAllError, match="no positive"):
        tar_at_far(feats, np.arange(50), [0.1])
    with pytest.raises(AllToAllError, match="no negative"):
        tar_at_far(feats, np.zeros(50), [0.1])
    with pytest.raises(AllToAllError, match="block_size"):
        tar_at_far(feats, labels, [0.1], block_size=0)
    with pytest.raises(AllToAllError, match="group 'solo': no positive"):
        group_tables(feats, labels, ["solo"] * 2 + ["big"] * 48, [0.1])
    solo = np.r_[[99, 99], labels[2:]]  # one identity: positives only
    assert list(group_tables(feats, solo, ["solo"] * 2 + ["big"] * 48, [0.1], skip_empty=True)) == ["big"]
    assert issubclass(AllToAllError, UserError) and issubclass(AllToAllError, ValueError)
    table = all_to_all_table(feats, labels, [1e-1, 1e-5], unreachable="skip")
    assert [r.far for r in table.rows] == [1e-1] and table.skipped == [1e-5]


# -- the command line ----------------------------------------------------------------------------


def test_cli_features_npy_groups_and_outputs(tmp_path, capsys, user_error):
    feats, labels = clustered(400, 16, 50, seed=7)
    np.save(tmp_path / "f.npy", feats)
    np.save(tmp_path / "l.npy", labels)
    (tmp_path / "groups.txt").write_text("".join(f"{i} {'g1' if i % 2 else 'g2'}\n" for i in range(300)))
    out = tmp_path / "out"
    argv = ["--features", tmp_path / "f.npy", "--labels", tmp_path / "l.npy", "--groups", tmp_path / "groups.txt",
            "--output", out, "--block-size", "100", "--device", "cpu"]
    res = a2a.main([str(a) for a in argv])
    printed = capsys.readouterr().out
    assert "TAR %" in printed and "g1" in printed
    n_neg = count_pairs(labels)[1]
    default = [f for f in a2a.DEFAULT_FARS if f * n_neg >= 1]
    rows = res["tables"]["all"]["rows"]
    skipped = [f for f in a2a.DEFAULT_FARS if f not in default]
    assert [r["far"] for r in rows] == default and res["tables"]["all"]["skipped_fars"] == skipped == [1e-5, 1e-6]
    expected = brute_all(feats, labels, default)
    assert {r["far"]: (r["tar"], r["threshold"], r["far_reached"]) for r in rows} == expected
    g1 = (np.arange(400) < 300) & (np.arange(400) % 2 == 1)
    assert res["tables"]["g1"]["sizes"] == [150]
    assert res["tables"]["g1"]["rows"][0]["tar"] == brute_all(feats[g1], labels[g1], [0.1])[0.1][0]
    saved = json.loads((out / "all_to_all_f.json").read_text())
    assert saved["tables"]["all"]["rows"] == rows
    assert (out / "roc_f.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    line = user_error(a2a.main, argv)
    assert "FileExistsError" in line and "--force" in line
    assert "FAR 1e-07 cannot be reached" in user_error(a2a.main, [*argv, "--force", "--fars", "1e-1", "1e-7"])
    assert "--fars 2: a FAR is in (0, 1)" in user_error(a2a.main, [*argv, "--force", "--fars", "2"])
    assert "--labels" in user_error(a2a.main, ["--features", tmp_path / "f.npy"])
    assert "one of --features" in user_error(a2a.main, ["--labels", tmp_path / "l.npy"])
    assert "needs --weights" in user_error(a2a.main, ["--data", tmp_path])


def test_cli_probe_gallery_npz(tmp_path):
    feats, labels = clustered(300, 8, 30, seed=8)
    np.savez(tmp_path / "p.npz", features=feats[:100], labels=labels[:100])
    np.savez(tmp_path / "g.npz", features=feats[100:], labels=labels[100:])
    res = a2a.main(["--probe", str(tmp_path / "p.npz"), "--gallery", str(tmp_path / "g.npz"), "--fars", "0.1", "0.01"])
    table = cross_table(feats[:100], labels[:100], feats[100:], labels[100:], (0.1, 0.01))
    assert res["mode"] == "probe x gallery"
    assert [r["tar"] for r in res["tables"]["all"]["rows"]] == [r.tar for r in table.rows]


def face(seed, centre):
    """A 112x112 face: the identity's pattern plus noise (so a random tiny network still separates them)."""
    rng = np.random.default_rng(seed)
    return np.clip(centre + rng.normal(0, 20, centre.shape), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def faces(tmp_path_factory):
    """Image folders: all/ (4 identities x 4), masked/ and plain/ (the same identities), a groups file."""
    root = tmp_path_factory.mktemp("faces")
    rng = np.random.default_rng(0)
    centres = {f"id{i}": rng.integers(0, 256, (112, 112, 3)).astype(np.float64) for i in range(4)}
    lines = []
    for folder, images in (("all", 4), ("masked", 2), ("plain", 3)):
        for ident, centre in centres.items():
            (root / folder / ident).mkdir(parents=True)
            for j in range(images):
                img = face(hash((folder, ident, j)) % 2**32, centre)
                if folder == "masked":
                    img[60:] = 128  # a grey "mask" over the lower face
                cv2.imwrite(str(root / folder / ident / f"{j}.png"), img)
                lines.append(f"{ident}/{j}.png {'A' if ident in ('id0', 'id1') else 'B'}")
    (root / "groups.txt").write_text("\n".join(sorted(set(lines))) + "\n")
    return root


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from backbones import get_backbone
    from utils.checkpoint import export_backbone

    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    torch.manual_seed(0)
    export_backbone(get_backbone("iresnet18", width=8, num_features=32), path, "iresnet18",
                    {"width": 8, "num_features": 32})
    return path


def test_cli_weights_data_groups_and_feature_cache(faces, weights, tmp_path, monkeypatch, one_torch_thread):
    from eval.embedder import Embedder, embed_faces
    from eval.extract import open_face_source

    loads = []
    real_load = Embedder.load.__func__
    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    out = tmp_path / "out"
    argv = ["--weights", str(weights), "--data", str(faces / "all"), "--groups", str(faces / "groups.txt"),
            "--output", str(out), "--workers", "0", "--batch-size", "8", "--device", "cpu", "--fars", "0.1"]
    res = a2a.main(argv)
    assert len(loads) == 1 and sorted(res["tables"]) == ["A", "B", "all"]
    assert res["tables"]["all"]["sizes"] == [16] and res["tables"]["A"]["sizes"] == [8]
    # the features are the flip test's, as embedded by the one embedder
    source = open_face_source(faces / "all")
    embed = Embedder.load(str(weights), device="cpu", batch_size=8)
    embs, flips = embed_faces(embed, (torch.stack([source[i] for i in range(16)]),), 16)
    expected = all_to_all_table(embs + flips, source.labels, [0.1])
    assert res["tables"]["all"]["rows"][0]["tar"] == expected.rows[0].tar
    assert res["tables"]["all"]["rows"][0]["threshold"] == pytest.approx(expected.rows[0].threshold, abs=1e-6)
    caches = [p for p in os.listdir(out) if p.startswith("features_data_")]
    assert len(caches) == 1
    loads.clear()
    again = a2a.main([*argv, "--name", "second"])  # features from the cache: no model loaded
    assert loads == [] and again["tables"] == res["tables"]
    no_flip = a2a.main([*argv, "--name", "noflip", "--no-flip"])
    assert len(loads) == 1 and len([p for p in os.listdir(out) if p.startswith("features_data_")]) == 2
    assert no_flip["flip"] is False


def test_cli_weights_probe_gallery_folders(faces, weights, tmp_path, one_torch_thread):
    out = tmp_path / "out"
    res = a2a.main(["--weights", str(weights), "--probe", str(faces / "masked"), "--gallery", str(faces / "plain"),
                    "--output", str(out), "--workers", "0", "--device", "cpu", "--fars", "0.1"])
    table = res["tables"]["all"]
    # identities matched by folder name: 4 x (2 x 3) positives among 8 x 12 pairs
    assert table["sizes"] == [8, 12] and table["n_pos"] == 24 and table["n_neg"] == 72


def test_cli_run_folder_each_step_cached(faces, tmp_path, capsys, one_torch_thread):
    from backbones import get_backbone

    run = tmp_path / "run"
    run.mkdir()
    for step in (10, 20):
        torch.manual_seed(step)
        torch.save(get_backbone("iresnet18", width=8, num_features=32).state_dict(), run / f"backbone-{step}.pth")
    out = tmp_path / "out"
    argv = ["--weights", str(run), "--data", str(faces / "all"), "--output", str(out), "--workers", "0",
            "--device", "cpu", "--fars", "0.1", "0.05"]
    summary = a2a.main(argv)
    assert summary["metrics"] == ["TAR@0.1", "TAR@0.05"] and [r["step"] for r in summary["steps"]] == [10, 20]
    one = json.loads((out / "all_to_all_backbone-20.json").read_text())
    assert summary["steps"][1]["scores"]["TAR@0.1"] == one["tables"]["all"]["rows"][0]["tar"]
    assert "best" in capsys.readouterr().out
    again = a2a.main(argv)  # every step from the steps cache
    assert again["steps"] == summary["steps"]
