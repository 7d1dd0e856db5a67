"""eval/ijb: meta readers, template pooling, 1:1 and 1:N metrics, the synthetic tree and the CLI."""

import json
import logging
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from eval.ijb import data, metrics
from eval.ijb.report import format_table
from tools import make_synthetic_ijb

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---------------------------------------------------------------- meta parsing


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return str(path)


def test_meta_readers(tmp_path):
    tid = write(tmp_path / "m" / "ijbc_face_tid_mid.txt", "1.jpg 1 69544\n2.jpg 1 69544\n\n3.jpg 11065 3\n")
    names, templates, medias = data.read_face_tid_mid(tid)
    assert names.tolist() == ["1.jpg", "2.jpg", "3.jpg"]
    assert templates.tolist() == [1, 1, 11065] and medias.tolist() == [69544, 69544, 3]
    assert templates.dtype == np.int64
    pairs = write(tmp_path / "m" / "pairs.txt", "1 11065 1\n1 7 0\n")
    p1, p2, label = data.read_template_pair_list(pairs)
    assert p1.tolist() == [1, 1] and p2.tolist() == [11065, 7] and label.tolist() == [1, 0]
    pts = write(
        tmp_path / "m" / "pts.txt",
        "1.jpg 46.060 62.026 87.785 60.323 68.851 77.656 52.162 99.875 86.450 98.648 0.999\n"
        "2.jpg 1 2 3 4 5 6 7 8 9 10 0.5\n",
    )
    n5, lmk, score = data.read_name_5pts_score(pts)
    assert n5.tolist() == ["1.jpg", "2.jpg"] and lmk.shape == (2, 5, 2)
    assert lmk[0, 1].tolist() == pytest.approx([87.785, 60.323]) and lmk[1, 4].tolist() == [9, 10]
    assert score.tolist() == pytest.approx([0.999, 0.5])
    csv = write(tmp_path / "m" / "g.csv", "TEMPLATE_ID,SUBJECT_ID,FILENAME,SIGHTING_ID\n"
                "5,100,img/1.jpg,1\n5,100,img/2.jpg,2\n9,7,frames/3.png,3\n")
    t, s = data.read_template_subject_id_list(csv)
    assert t.tolist() == [5, 5, 9] and s.tolist() == [100, 100, 7]


def test_meta_errors_name_file_and_line(tmp_path):
    bad = write(tmp_path / "a.txt", "1.jpg 1 2\n2.jpg 1\n")
    with pytest.raises(data.IJBFormatError, match=r"a\.txt:2: expected 3 fields, got 2"):
        data.read_face_tid_mid(bad)
    bad = write(tmp_path / "b.txt", "1.jpg x 2\n")
    with pytest.raises(data.IJBFormatError, match=r"b\.txt:1: 'x' is not an integer"):
        data.read_face_tid_mid(bad)
    bad = write(tmp_path / "c.txt", "1 2 1\n1 3 2\n")
    with pytest.raises(data.IJBFormatError, match="labels must be 0/1"):
        data.read_template_pair_list(bad)
    bad = write(tmp_path / "d.csv", "SUBJECT_ID,TEMPLATE_ID\n1,2\n")
    with pytest.raises(data.IJBFormatError, match="TEMPLATE_ID"):
        data.read_template_subject_id_list(bad)
    with pytest.raises(FileNotFoundError, match="nope.txt"):
        data.read_face_tid_mid(str(tmp_path / "nope.txt"))
    with pytest.raises(ValueError, match="unknown IJB target 'IJBA'"):
        data.resolve_paths(str(tmp_path), "IJBA")
    with pytest.raises(FileNotFoundError, match="ijbc_face_tid_mid.txt"):
        data.resolve_paths(str(tmp_path), "IJBC")


def test_load_meta_checks_row_order(tmp_path):
    root = tmp_path / "IJBC" / "meta"
    write(root / "ijbc_face_tid_mid.txt", "1.jpg 1 1\n2.jpg 2 2\n")
    write(root / "ijbc_name_5pts_score.txt", "".join(f"{n} " + "1 " * 10 + "0.9\n" for n in ["1.jpg", "2.jpg"]))
    write(root / "ijbc_template_pair_label.txt", "1 2 0\n")
    meta = data.load_meta(str(tmp_path), "ijbc")  # data root holding IJBC/
    assert meta.paths.target == "IJBC" and meta.faceness.tolist() == pytest.approx([0.9, 0.9])
    assert data.load_meta(str(tmp_path / "IJBC"), "IJBC").names.tolist() == ["1.jpg", "2.jpg"]  # the folder itself
    write(root / "ijbc_name_5pts_score.txt", "".join(f"{n} " + "1 " * 10 + "0.9\n" for n in ["2.jpg", "1.jpg"]))
    with pytest.raises(data.IJBFormatError, match=r"row 1: .*'2\.jpg'.*'1\.jpg'"):
        data.load_meta(str(tmp_path), "IJBC")


# ---------------------------------------------------------------- template features


def loop_image2template(img_feats, templates, medias):
    """A literal transcription of the protocol: mean per media, sum per template, L2 norm."""
    uniq = np.unique(templates)
    out = np.zeros((len(uniq), img_feats.shape[1]))
    for i, t in enumerate(uniq):
        rows = np.where(templates == t)[0]
        acc = np.zeros(img_feats.shape[1])
        for m in np.unique(medias[rows]):
            acc += img_feats[rows[medias[rows] == m]].astype(np.float64).mean(0)
        out[i] = acc / np.linalg.norm(acc)
    return out, uniq


def test_image2template_feature_hand_case():
    feats = np.array([[1, 0], [3, 0], [0, 2], [0, -1], [4, 3]], np.float32)
    templates = np.array([1, 1, 1, 2, 5])
    medias = np.array([10, 10, 11, 12, 10])  # media 10 also appears in template 5: grouped per template
    tf, ut = metrics.image2template_feature(feats, templates, medias)
    r = 1 / math.sqrt(2)
    assert ut.tolist() == [1, 2, 5]
    np.testing.assert_allclose(tf, [[r, r], [0, -1], [0.8, 0.6]], atol=1e-12)
    scores = metrics.verification(tf, ut, np.array([1, 1, 5]), np.array([2, 5, 2]))
    np.testing.assert_allclose(scores, [-r, (0.8 + 0.6) * r, -0.6], atol=1e-12)


def test_image2template_feature_matches_loop_and_batches():
    rng = np.random.default_rng(0)
    n = 300
    feats = rng.normal(size=(n, 16)).astype(np.float32)
    templates = rng.choice([7, 3, 1000, 42, 5, 99], n)
    medias = rng.integers(0, 20, n)
    tf, ut = metrics.image2template_feature(feats, templates, medias)
    ref, ref_ut = loop_image2template(feats, templates, medias)
    assert ut.tolist() == ref_ut.tolist()
    np.testing.assert_allclose(tf, ref, atol=1e-10)
    p1, p2 = rng.choice(ut, 1000), rng.choice(ut, 1000)
    full = metrics.verification(tf, ut, p1, p2)
    loop = np.array([tf[list(ut).index(a)] @ tf[list(ut).index(b)] for a, b in zip(p1, p2)])
    np.testing.assert_allclose(full, loop, atol=1e-12)
    np.testing.assert_allclose(metrics.verification(tf, ut, p1, p2, batch_size=7), full, atol=0)
    with pytest.raises(ValueError, match=r"template id\(s\) of the pair list .*\[8\]"):
        metrics.verification(tf, ut, np.array([7, 8]), np.array([3, 3]))


def test_verification_paths_agree():
    # Many templates and few pairs take the row-gather path, few templates the matrix-product path;
    # ids beyond the lookup-table range take the sorted-search path.
    rng = np.random.default_rng(1)
    tf = rng.normal(size=(200, 8))
    for ut in (np.arange(200) * 3 + 1, np.arange(200) * 3 + (1 << 40)):
        for n_pairs in (50, 20000):
            p1, p2 = rng.choice(ut, n_pairs), rng.choice(ut, n_pairs)
            rows = {t: i for i, t in enumerate(ut)}
            loop = np.array([tf[rows[a]] @ tf[rows[b]] for a, b in zip(p1, p2)])
            np.testing.assert_allclose(metrics.verification(tf, ut, p1, p2), loop, atol=1e-12)
        for bad in (-5, int(ut.max()) + 1, int(ut[0]) + 1):
            with pytest.raises(ValueError, match=rf"\[{bad}\]"):
                metrics.verification(tf, ut, np.array([ut[0], bad]), np.array([ut[1], ut[1]]))


def test_image_input_features_modes():
    e = np.array([[3, 4], [1, 0]], np.float32)
    ef = np.array([[1, 0], [0, 1]], np.float32)
    face = np.array([0.5, 2.0], np.float32)
    f = metrics.image_input_features(e, ef, face, **metrics.parse_test_mode("N1D1F1"))
    np.testing.assert_allclose(f, [[2, 2], [2, 2]])  # (e + ef) * score
    f = metrics.image_input_features(e, ef, face, **metrics.parse_test_mode("n0d0f0"))
    np.testing.assert_allclose(f, [[0.6, 0.8], [1, 0]])
    f = metrics.image_input_features(e, ef, face, **metrics.parse_test_mode("N0D1F1"))
    r = 1 / math.sqrt(2)
    np.testing.assert_allclose(f, [[0.5 * r, 0.5 * r], [2 * r, 2 * r]], rtol=1e-6)  # (4,4), (1,1)
    assert len(metrics.TEST_MODES) == 8 and metrics.TEST_MODES[0] == "N1D1F1"
    with pytest.raises(ValueError, match="unknown IJB test mode 'N2D1F1'"):
        metrics.parse_test_mode("N2D1F1")


# ---------------------------------------------------------------- 1:1


def insightface_pick(fpr, tpr, x):
    """insightface's table code, transcribed: min over (|fpr - x|, index) of the flipped curve."""
    fpr, tpr = np.flipud(fpr), np.flipud(tpr)
    _, i = min(zip(abs(fpr - x), range(len(fpr))))
    return tpr[i]


def test_tpr_at_fpr_picking_rule():
    fpr = np.array([0, 0, 1e-5, 1e-5, 1e-3, 0.1, 1])
    tpr = np.array([0, 0.2, 0.3, 0.5, 0.6, 0.9, 1])
    got = metrics.tpr_at_fpr(fpr, tpr, [1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1])
    # 1e-6 -> fpr 0 (largest tpr there), 1e-5 -> 0.5 (largest of the two), 1e-4 -> fpr 1e-5, 1e-2 -> 1e-3
    assert got == [0.2, 0.5, 0.5, 0.6, 0.6, 0.9]
    assert got == [insightface_pick(fpr, tpr, x) for x in metrics.FARS]


def test_evaluate_1v1_small_roc():
    # 4 genuine, 10 impostors. Above the top impostor (0.9): 2 genuine -> TAR 0.5 at FAR 0;
    # FAR 0.1 (1 impostor accepted): 3 genuine (0.95, 0.93, 0.85) -> 0.75.
    label = np.array([1, 1, 1, 1] + [0] * 10)
    score = np.array([0.95, 0.93, 0.85, 0.2, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.1, 0.05, 0.0])
    r = metrics.evaluate_1v1(label, score)
    assert r["tar_at_far"]["1e-06"] == 0.5 and r["tar_at_far"]["0.01"] == 0.5
    assert r["tar_at_far"]["0.1"] == 0.75
    # AUC: genuine 0.95/0.93 beat all 10, 0.85 beats 9, 0.2 beats 3 -> (10+10+9+3)/40
    assert r["auc"] == pytest.approx(32 / 40)


# ---------------------------------------------------------------- 1:N

S_CLOSED = np.array([[0.9, 0.5, 0.1], [0.7, 0.6, 0.2], [0.3, 0.4, 0.35]])


@pytest.mark.parametrize("chunk", [1, 2, 100])
def test_identification_closed_hand_case(chunk):
    # Gallery = one-hot vectors, so probe features are the similarity rows themselves.
    r = metrics.identification_closed(S_CLOSED, np.array([10, 20, 30]), np.eye(3), np.array([10, 20, 30]),
                                      fpirs=(0.01, 0.5, 1.0), ranks=(1, 2), chunk=chunk)
    # mates 0.9 (rank 1), 0.6 (rank 2: 0.7 higher), 0.35 (rank 2: 0.4 higher)
    assert r["rank"] == {"1": pytest.approx(1 / 3), "2": 1.0}
    assert r["cmc"] == [pytest.approx(1 / 3), 1.0, 1.0]
    # non-mated, sorted: 0.7 0.5 0.4 0.3 0.2 0.1; k = ceil(3 f) = 1, 2, 3
    assert r["threshold"] == {"0.01": 0.7, "0.5": 0.5, "1": 0.4}
    assert r["tpir_at_fpir"] == {"0.01": pytest.approx(1 / 3), "0.5": pytest.approx(2 / 3), "1": pytest.approx(2 / 3)}


def insightface_closed(probe, probe_ids, gallery, gallery_ids, fpirs):
    """ijb_1n.py's evaluation, transcribed: argsort top-k, then the k-th largest non-mated pair."""
    sim = probe @ gallery.T
    mask = [list(gallery_ids).index(i) for i in probe_ids]
    top = np.argsort(-sim, kind="stable")
    ranks = {k: np.mean([mask[i] in top[i, :k] for i in range(len(probe))]) for k in (1, 5, 10)}
    pos = sim[np.arange(len(probe)), mask].copy()
    sim[np.arange(len(probe)), mask] = -2.0
    neg = sorted(sim[sim > -2.0].tolist(), reverse=True)
    tpir = [np.sum(pos > neg[math.ceil(len(probe) * f) - 1]) / len(probe) for f in fpirs]
    return ranks, tpir


def evals_open(probe, probe_ids, gallery, gallery_ids, fpirs):
    """ijb_evals.py's evaluation_1N (ContraFace), transcribed with plain loops."""
    sim = probe @ gallery.T
    top, pos, other, nonmated = {1: 0, 5: 0, 10: 0}, [], [], []
    for i, pid in enumerate(probe_ids):
        if pid in gallery_ids:
            j = list(gallery_ids).index(pid)
            order = np.argsort(sim[i], kind="stable")[::-1]
            for k in top:
                top[k] += j in order[:k]
            pos.append(sim[i, j])
            other.append(np.delete(sim[i], j).max())
        else:
            nonmated.append(sim[i].max())
    nonmated = sorted(nonmated, reverse=True)
    correct = np.array(pos) > np.array(other)
    tpir = [np.sum(correct & (np.array(pos) > nonmated[max(int(len(nonmated) * f) - 1, 0)])) / len(pos) for f in fpirs]
    return top, tpir


def test_identification_matches_reference_transcriptions():
    rng = np.random.default_rng(3)
    g = rng.normal(size=(24, 16))
    g /= np.linalg.norm(g, axis=1, keepdims=True)
    gid = rng.permutation(np.arange(100, 124))
    pid = rng.choice(gid, 90)
    p = g[[list(gid).index(i) for i in pid]] + rng.normal(size=(90, 16)) * 0.35
    p /= np.linalg.norm(p, axis=1, keepdims=True)
    fpirs = (0.01, 0.1, 0.3)
    ranks, tpir = insightface_closed(p, pid, g, gid, fpirs)
    r = metrics.identification_closed(p, pid, g, gid, fpirs=fpirs, chunk=16)
    assert r["rank"] == {str(k): pytest.approx(v) for k, v in ranks.items()}
    assert list(r["tpir_at_fpir"].values()) == pytest.approx(tpir)
    assert 0.1 < r["rank"]["1"] < 0.95 and 0 < tpir[0] < tpir[2]  # not a degenerate case
    g1 = gid[:12]  # open set: the probes of the other 12 subjects are non-mated searches
    top, tpir = evals_open(p, pid, g[:12], g1, fpirs)
    r = metrics.identification_open(p, pid, g[:12], g1, fpirs=fpirs, chunk=16)
    assert r["count"] == {str(k): v for k, v in top.items()}
    assert list(r["tpir_at_fpir"].values()) == pytest.approx(tpir)
    assert 0 < tpir[0] < 1


def test_identification_closed_requires_one_mate():
    with pytest.raises(ValueError, match=r"probe subjects .*\[40\]"):
        metrics.identification_closed(S_CLOSED, np.array([10, 20, 40]), np.eye(3), np.array([10, 20, 30]))
    with pytest.raises(ValueError, match="several templates for subject"):
        metrics.identification_closed(S_CLOSED, np.array([10, 20, 30]), np.eye(3), np.array([10, 20, 20]))


def test_identification_open_hand_case():
    sims = np.array([[0.9, 0.5], [0.7, 0.6], [0.3, 0.4], [0.8, 0.2]])
    ids = np.array([10, 20, 30, 40])  # 30 and 40 are not in this gallery: non-mated searches
    r = metrics.identification_open(sims, ids, np.eye(2), np.array([10, 20]), fpirs=(0.01, 1.0), ranks=(1, 2))
    assert (r["num_mated"], r["num_nonmated"]) == (2, 2)
    assert r["rank"] == {"1": 0.5, "2": 1.0} and r["count"] == {"1": 1, "2": 2}
    # non-mated top scores 0.8, 0.4; index max(int(2 f) - 1, 0) = 0, 1
    assert r["threshold"] == {"0.01": 0.8, "1": 0.4}
    # only probe 0 is rank-1 (0.9 > 0.5) and above both thresholds; probe 1 is rank 2
    assert r["tpir_at_fpir"] == {"0.01": 0.5, "1": 0.5}
    other = metrics.identification_open(sims, ids, np.eye(2)[::-1], np.array([30, 40]), fpirs=(0.01, 1.0), ranks=(1, 2))
    # gallery 30 = e1, 40 = e0: probe 2 mate 0.4 > 0.3, probe 3 mate 0.8 > 0.2: both rank 1;
    # non-mated (probes 0, 1) top scores 0.9, 0.7 -> thresholds 0.9 and 0.7
    assert other["count"] == {"1": 2, "2": 2} and other["threshold"] == {"0.01": 0.9, "1": 0.7}
    assert other["tpir_at_fpir"] == {"0.01": 0.0, "1": 0.5}
    mean = metrics.combine_open({"G1": r, "G2": other}, num_probes=4)
    assert mean["rank"] == {"1": 0.75, "2": 1.0}  # (1 + 2) / 4, (2 + 2) / 4
    assert mean["tpir_at_fpir"] == {"0.01": 0.25, "1": 0.5}


def test_select_templates():
    tf = np.arange(12.0).reshape(4, 3)
    feats, t, s = metrics.select_templates(tf, np.array([2, 4, 6, 8]), np.array([8, 8, 2]), np.array([5, 5, 1]))
    assert t.tolist() == [2, 8] and s.tolist() == [1, 5]
    np.testing.assert_array_equal(feats, tf[[0, 3]])


def test_format_table():
    out = format_table(["Methods", "1e-06"], [["a", "91.20"], ["long name", "1.00"]])
    lines = out.splitlines()
    assert lines[1] == "| Methods   | 1e-06 |" and lines[4] == "| long name |  1.00 |"
    assert len({len(line) for line in lines}) == 1


# ---------------------------------------------------------------- synthetic tree + CLI

SMALL = ["--subjects", "6", "--templates", "3", "--max-medias", "2", "--max-frames", "2", "--profile", "lfw"]


@pytest.fixture(scope="module")
def ijb_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    make_synthetic_ijb.main(["--output", str(root), "--targets", "IJBC,IJBB", *SMALL])
    return root


def test_synthetic_tree_structure(ijb_tree):
    meta = data.load_meta(str(ijb_tree), "IJBC")
    manifest = json.loads((ijb_tree / "IJBC" / "synthetic_manifest.json").read_text())
    assert len(meta.names) == manifest["num_images"] and len(np.unique(meta.templates)) == 18
    # every same-subject template pair is genuine: 6 subjects x C(3, 2); impostors 5x
    assert meta.label.sum() == 18 and (meta.label == 0).sum() == 90
    subj = {im["template"]: im["subject"] for im in manifest["images"]}
    same = np.array([subj[a] == subj[b] for a, b in zip(meta.p1, meta.p2)])
    np.testing.assert_array_equal(same, meta.label == 1)
    lists = data.load_meta_1n(meta.paths)
    g1, g2 = (np.unique(lists.galleries[g][1]) for g in ("G1", "G2"))
    assert g1.tolist() == [1, 2, 3] and g2.tolist() == [4, 5, 6]
    assert np.unique(lists.probe[0]).size == 12 and set(lists.probe[1]) == set(range(1, 7))
    assert (0 < meta.faceness).all() and (meta.faceness < 1).all()
    ijbb = data.load_meta_1n(data.resolve_paths(str(ijb_tree), "IJBB"))
    assert list(ijbb.galleries) == ["S1", "S2"]


def test_synthetic_tree_refuses_overwrite_and_is_deterministic(ijb_tree, tmp_path):
    with pytest.raises(FileExistsError, match="--force"):
        make_synthetic_ijb.main(["--output", str(ijb_tree), "--targets", "IJBC", *SMALL])
    make_synthetic_ijb.main(["--output", str(tmp_path), "--targets", "IJBC", *SMALL])
    for name in ["ijbc_name_5pts_score.txt", "ijbc_template_pair_label.txt", "ijbc_1N_probe_mixed.csv"]:
        assert (tmp_path / "IJBC/meta" / name).read_bytes() == (ijb_tree / "IJBC/meta" / name).read_bytes()
    assert (tmp_path / "IJBC/loose_crop/7.jpg").read_bytes() == (ijb_tree / "IJBC/loose_crop/7.jpg").read_bytes()
    (tmp_path / "IJBC" / "stale.txt").write_text("x")
    make_synthetic_ijb.main(["--output", str(tmp_path), "--targets", "IJBC", "--force", "--seed", "1", *SMALL])
    assert not (tmp_path / "IJBC" / "stale.txt").exists()
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]  # no temp folders left
    assert (tmp_path / "IJBC/loose_crop/7.jpg").read_bytes() != (ijb_tree / "IJBC/loose_crop/7.jpg").read_bytes()


def test_dataset_aligns_loose_crops(ijb_tree):
    meta = data.load_meta(str(ijb_tree), "IJBC")
    ds = data.IJBAlignedFaces(meta.paths.image_dir, meta.names, meta.landmarks)
    x = torch.stack([ds[i] for i in range(len(ds))])
    assert x.shape == (len(meta.names), 3, 112, 112) and x.dtype == torch.uint8
    # frames of one media are one rendering placed differently: aligned, they nearly coincide
    same, diff = [], []
    for i in range(len(ds) - 1):
        d = (x[i].float() - x[i + 1].float()).abs().mean().item()
        (same if meta.medias[i] == meta.medias[i + 1] else diff).append(d)
    assert same and max(same) < 12 and min(diff) > 2 * max(same)
    missing = data.IJBAlignedFaces(meta.paths.image_dir, ["nope.jpg"], meta.landmarks[:1])
    with pytest.raises(FileNotFoundError, match=r"nope\.jpg is missing \(row 1"):
        missing[0]



def cli_args(weights, root, out, *extra):
    return ["--weights", str(weights), "--data-root", str(root), "--target", "IJBC", "--output", str(out),
            "--batch-size", "16", "--num-workers", "0", *extra]


def test_cli_end_to_end_and_cache(ijb_tree, tmp_path, monkeypatch, capsys, caplog, one_torch_thread):
    from backbones import get_backbone
    from eval.embedder import Embedder
    from eval.ijb import ijb_eval
    from utils.checkpoint import export_backbone

    caplog.set_level(logging.INFO)
    torch.manual_seed(0)
    weights = tmp_path / "tiny.pt"
    export_backbone(get_backbone("iresnet18", width=8, num_features=32), weights, "iresnet18",
                    {"width": 8, "num_features": 32})
    # spy on the real Embedder: how often a model is loaded and a batch embedded
    loads, calls = [], []
    real_load, real_call = Embedder.load.__func__, Embedder.__call__
    monkeypatch.setattr(Embedder, "load", classmethod(lambda cls, *a, **k: loads.append(a) or real_load(cls, *a, **k)))
    monkeypatch.setattr(Embedder, "__call__", lambda self, x: calls.append(len(x)) or real_call(self, x))

    out = tmp_path / "out"
    argv = cli_args(weights, ijb_tree, out, "--mode", "both", "--test-modes", "N1D1F1,N0D0F0")
    res = ijb_eval.main(argv)
    n = res["num_images"]
    assert len(loads) == 1 and sum(calls) == 2 * n and res["features_from_cache"] is False  # images + mirrors
    assert res["embedding_size"] == 32
    saved = json.loads((out / "IJBC_tiny_both.json").read_text())
    assert saved["1v1"]["N1D1F1"]["tar_at_far"].keys() == {"1e-06", "1e-05", "0.0001", "0.001", "0.01", "0.1"}
    assert 0 <= saved["1v1"]["N0D0F0"]["auc"] <= 1
    for name in ["IJBC_tiny_roc.png", "IJBC_tiny_1vN.png"]:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    closed = saved["1vN"]["N1D1F1"]["closed_G1+G2"]
    assert closed["num_probes"] == 12 and closed["num_gallery"] == 6 and len(closed["cmc"]) == 6
    assert set(saved["1vN"]["N0D0F0"]["open"]) == {"G1", "G2", "mean"}
    assert saved["1vN"]["N1D1F1"]["open"]["G1"]["num_mated"] == 6  # probes of subjects 1-3
    printed = capsys.readouterr().out
    assert "IJBC 1:1 verification" in printed and "tiny-IJBC N0D0F0" in printed and "rank-1" in printed

    # The numbers are those of the metric functions applied to the cached features, and those
    # features are the Embedder's on the aligned crops (and their mirrors).
    meta = data.load_meta(str(ijb_tree), "IJBC")
    with np.load(saved["feature_cache"]) as z:
        embs, embs_flip = z["embs"], z["embs_flip"]
    ds = data.IJBAlignedFaces(meta.paths.image_dir, meta.names, meta.landmarks)
    crops = torch.stack([ds[i] for i in (0, n - 1)])
    emb = Embedder.load(str(weights), batch_size=4)
    np.testing.assert_allclose(embs[[0, n - 1]], emb(crops), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(embs_flip[[0, n - 1]], emb(torch.flip(crops, [3])), rtol=1e-4, atol=1e-5)
    feats = metrics.image_input_features(embs, embs_flip, meta.faceness)
    tf, ut = metrics.image2template_feature(feats, meta.templates, meta.medias)
    expect = metrics.evaluate_1v1(meta.label, metrics.verification(tf, ut, meta.p1, meta.p2))
    assert saved["1v1"]["N1D1F1"]["tar_at_far"] == expect["tar_at_far"]

    # Second run: refuses to overwrite results without --force ...
    with pytest.raises(FileExistsError, match="--force"):
        ijb_eval.main(argv)
    # ... and with --force reuses features and scores: no model load, no embedding call.
    caplog.clear()
    loads.clear(), calls.clear()
    res2 = ijb_eval.main(argv + ["--force"])
    assert loads == [] and calls == [] and res2["features_from_cache"] is True
    assert "features: loaded from cache" in caplog.text and "1:1 N1D1F1: scores loaded from cache" in caplog.text
    assert res2["1v1"] == saved["1v1"] and res2["1vN"] == saved["1vN"]
    # Touching the weights invalidates the cache.
    os.utime(weights, ns=(1, 1))
    res3 = ijb_eval.main(argv + ["--force", "--mode", "1v1", "--test-modes", "N1D1F1"])
    assert len(loads) == 1 and res3["features_from_cache"] is False
    assert res3["1v1"]["N1D1F1"] == saved["1v1"]["N1D1F1"]  # same weights, same numbers


class PixelNet(torch.nn.Module):
    """A stand-in backbone: 14x14 average-pooled, mean-removed pixels (no training needed)."""

    def forward(self, x):
        f = torch.nn.functional.avg_pool2d(x, 8).flatten(1)
        return f - f.mean(1, keepdim=True)


def test_cli_pixel_features_separate_identities(ijb_tree, tmp_path, monkeypatch, one_torch_thread):
    # With features that carry identity (aligned pixels of synthetic faces), the pipeline's
    # numbers must be clearly above chance: checks alignment, pooling and metrics together.
    from eval.embedder import Embedder
    from eval.ijb import ijb_eval

    monkeypatch.setattr(ijb_eval, "load_embedder", lambda args: Embedder.from_module(PixelNet(), device="cpu"))
    weights = tmp_path / "pixnet.pt"
    weights.write_bytes(b"stand-in: load_embedder is replaced")
    res = ijb_eval.main(cli_args(weights, ijb_tree, tmp_path / "out", "--mode", "both", "--num-workers", "1"))
    assert res["1v1"]["N1D1F1"]["auc"] > 0.62  # 0.74 here; chance 0.5
    assert res["1vN"]["N1D1F1"]["closed_G1+G2"]["rank"]["1"] > 2 / 6  # chance 1/6


def test_cli_help_and_import_has_no_side_effects():
    # one fresh interpreter: importing eval.ijb touches neither CUDA nor the model code, and
    # the CLI's --help works
    code = (
        "import sys, torch, eval.ijb, eval.ijb.ijb_eval as m; "
        "assert not torch.cuda.is_initialized(); "
        "assert 'eval.embedder' not in sys.modules and 'backbones' not in sys.modules; "
        "m.main(['--help'])"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "--test-modes" in out.stdout, out.stderr


def test_cli_run_folder_each_step_cached_and_best(ijb_tree, tmp_path, monkeypatch, capsys, one_torch_thread):
    from backbones import get_backbone
    from eval.embedder import Embedder
    from eval.ijb import ijb_eval

    run = tmp_path / "run"
    run.mkdir()
    for step, seed in ((10, 1), (20, 2)):
        torch.manual_seed(seed)
        torch.save(get_backbone("iresnet18", width=8, num_features=32).state_dict(), run / f"backbone-{step}.pth")
    (run / "checkpoint-20.pt").write_bytes(b"same step as backbone-20.pth: not read")
    loads = []
    real_load = Embedder.load.__func__
    spy = classmethod(lambda cls, *a, **k: loads.append(a[0]) or real_load(cls, *a, **k))
    monkeypatch.setattr(Embedder, "load", spy)
    out = tmp_path / "out"
    argv = cli_args(run, ijb_tree, out, "--mode", "both", "--test-modes", "N1D1F1")
    summary = ijb_eval.main(argv)
    assert [os.path.basename(p) for p in loads] == ["backbone-10.pth", "backbone-20.pth"]
    assert summary["metrics"] == ["N1D1F1 TAR@1e-05", "N1D1F1 TAR@0.0001", "N1D1F1 rank-1"]
    for row in summary["steps"]:  # the per-step numbers are those of the per-file result
        one = json.loads((out / f"IJBC_backbone-{row['step']}_both.json").read_text())
        assert row["scores"] == {
            "N1D1F1 TAR@1e-05": one["1v1"]["N1D1F1"]["tar_at_far"]["1e-05"],
            "N1D1F1 TAR@0.0001": one["1v1"]["N1D1F1"]["tar_at_far"]["0.0001"],
            "N1D1F1 rank-1": one["1vN"]["N1D1F1"]["closed_G1+G2"]["rank"]["1"],
        }
    for metric in summary["metrics"]:
        values = {r["step"]: r["scores"][metric] for r in summary["steps"]}
        best = max(values, key=lambda s: (values[s], -s))
        assert summary["best"][metric] == {"step": best, "name": f"backbone-{best}.pth", "value": values[best]}
    assert json.loads((out / "IJBC_steps_both.json").read_text())["best"] == summary["best"]
    assert "backbone-20.pth" in capsys.readouterr().out
    # a re-run takes every step from the cache; a changed file is evaluated again
    loads.clear()
    assert ijb_eval.main(argv)["steps"] == summary["steps"] and loads == []
    os.utime(run / "backbone-10.pth", ns=(1, 1))
    assert ijb_eval.main(argv)["steps"] == summary["steps"]
    assert [os.path.basename(p) for p in loads] == ["backbone-10.pth"]


def test_threaded_extraction_gives_the_sequential_features(ijb_tree, one_torch_thread):
    from backbones import get_backbone
    from eval.embedder import Embedder
    from eval.faces import iter_batches
    from eval.ijb.ijb_eval import extract_features

    meta = data.load_meta(str(ijb_tree), "IJBC")
    ds = data.IJBAlignedFaces(meta.paths.image_dir, meta.names, meta.landmarks)
    batches = list(iter_batches(ds, 4, num_workers=3))
    assert [len(b) for b in batches] == [4] * (len(ds) // 4) + ([len(ds) % 4] if len(ds) % 4 else [])
    assert torch.equal(torch.cat(batches), torch.stack([ds[i] for i in range(len(ds))]))  # order and pixels
    torch.manual_seed(0)
    embedder = Embedder.from_module(get_backbone("iresnet18", width=8, num_features=32), batch_size=4)
    sequential = extract_features(embedder, ds, batch_size=4, num_workers=0)
    threaded = extract_features(embedder, ds, batch_size=4, num_workers=3)
    for a, b in zip(sequential, threaded):
        assert a.shape == (len(ds), 32) and np.array_equal(a, b)
    feats = [metrics.image2template_feature(metrics.image_input_features(*f, meta.faceness), meta.templates,
                                            meta.medias)[0] for f in (sequential, threaded)]
    assert np.array_equal(*feats)
