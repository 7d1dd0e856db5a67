"""eval.embedder and eval.evaluation on tiny models and tiny synthetic verification bins."""

from __future__ import annotations

import json
import os
import pickle

import cv2
import numpy as np
import pytest
import torch

from backbones import get_backbone
from eval import evaluation, verification
from eval.embedder import Embedder, embed_faces, load_backbone
from utils.checkpoint import CheckpointError, UnsafeCheckpointError, export_backbone

TINY = {"width": 8, "num_features": 16}
N_PAIRS = 10  # the 10-fold protocol needs at least 10 pairs


def tiny(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return get_backbone("iresnet18", **TINY).eval()


def smooth_images(rng: np.random.Generator, n: int) -> np.ndarray:
    """n random low-frequency 112x112 RGB images (survive JPEG, differ from each other)."""
    small = rng.integers(0, 256, size=(n, 7, 7, 3)).astype(np.uint8)
    return np.stack([cv2.resize(s, (112, 112), interpolation=cv2.INTER_CUBIC) for s in small])


def write_bin(path, seed: int, n_pairs: int = N_PAIRS) -> None:
    """A .bin as the public ones: pickle of (list of JPEG bytes, list of bool), 2 images per pair.

    Same-identity pairs are one image and a slightly noisy copy, so even an untrained network
    separates them from the different pairs (the accuracy is well above chance).
    """
    rng = np.random.default_rng(seed)
    images, issame = [], []
    for i in range(n_pairs):
        same = i % 2 == 0
        a, b = smooth_images(rng, 2)
        if same:
            b = np.clip(a.astype(int) + rng.integers(-6, 7, size=a.shape), 0, 255).astype(np.uint8)
        for img in (a, b):
            ok, buf = cv2.imencode(".jpg", cv2.cvtColor(img, cv2.COLOR_RGB2BGR))
            assert ok
            images.append(buf.tobytes())
        issame.append(same)
    with open(path, "wb") as f:
        pickle.dump((images, issame), f, protocol=2)


# -- Embedder ----------------------------------------------------------------------------------


def test_embedder_matches_manual_forward_and_layouts():
    model = tiny(1)
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, size=(5, 112, 112, 3), dtype=np.uint8)
    embedder = Embedder.from_module(model, batch_size=2)  # 3 batches, the last one short
    out = embedder(imgs)
    assert out.dtype == np.float32 and out.shape == (5, 16) and embedder.embedding_size == 16
    x = torch.from_numpy(imgs).permute(0, 3, 1, 2).float()
    with torch.no_grad():
        expected = model(((x / 255) - 0.5) / 0.5).numpy()
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    # NCHW torch tensor input gives the same numbers; a mirrored view (negative strides) works.
    np.testing.assert_array_equal(embedder(torch.from_numpy(imgs).permute(0, 3, 1, 2)), out)
    flipped = embedder(imgs[:, :, ::-1])
    np.testing.assert_allclose(flipped, embedder(np.ascontiguousarray(imgs[:, :, ::-1])), atol=1e-6)
    assert np.abs(flipped - out).max() > 1e-3
    assert embedder(imgs[:0]).shape == (0, 16)


def test_embedder_rejects_bad_input_and_restores_train_mode():
    model = tiny(1).train()
    embedder = Embedder.from_module(model)
    with pytest.raises(TypeError, match="uint8"):
        embedder(np.zeros((1, 112, 112, 3), np.float32))
    with pytest.raises(ValueError, match="112x112"):
        embedder(np.zeros((1, 96, 96, 3), np.uint8))
    with pytest.raises(ValueError, match="batch"):
        embedder(np.zeros((112, 112, 3), np.uint8))
    mean_before = model.bn1.running_mean.clone()
    embedder(np.full((2, 112, 112, 3), 200, np.uint8))
    assert model.training  # given back in train mode
    assert torch.equal(model.bn1.running_mean, mean_before)  # ran in eval mode: BN stats untouched


def test_embedder_load_reads_network_from_checkpoint(tmp_path):
    model = tiny(3)
    export_backbone(model, tmp_path / "model.pt", "iresnet18", TINY)
    embedder = Embedder.load(str(tmp_path / "model.pt"), device="cpu", batch_size=4)
    imgs = np.random.default_rng(1).integers(0, 256, size=(3, 112, 112, 3), dtype=np.uint8)
    np.testing.assert_array_equal(embedder(imgs), Embedder.from_module(model)(imgs))
    # A ContraFace-style file without metadata: network inferred from the key layout.
    torch.save({f"backbone.{k}": v for k, v in model.state_dict().items()}, tmp_path / "5model.pth")
    backbone, meta = load_backbone(str(tmp_path / "5model.pth"))
    assert (meta["network"], meta["network_kwargs"]) == ("iresnet18", TINY)
    np.testing.assert_array_equal(Embedder.from_module(backbone)(imgs), embedder(imgs))


# -- evaluation CLI ----------------------------------------------------------------------------


@pytest.fixture()
def bins(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    write_bin(data / "lfw.bin", seed=10)
    write_bin(data / "cfp_fp.bin", seed=11)
    return data


def test_evaluation_cli_folder_of_checkpoints(tmp_path, bins, capsys):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    ours, contraface = tiny(1), tiny(2)
    export_backbone(ours, ckpts / "model.pt", "iresnet18", TINY)
    torch.save(
        {
            **{f"backbone.{k}": v for k, v in contraface.state_dict().items()},
            "header.kernel": torch.randn(16, 4),
        },
        ckpts / "2000model.pth",
    )
    out = tmp_path / "results.json"
    argv = ["--weights", str(ckpts), "--data-dir", str(bins), "--targets", "lfw,cfp_fp,agedb_30",
            "--batch-size", "40", "--output", str(out), "--device", "cpu"]
    evaluation.main(argv)
    result = json.loads(out.read_text())
    assert result["targets"] == ["lfw", "cfp_fp"] and result["missing_targets"] == ["agedb_30"]
    names = [r["name"] for r in result["checkpoints"]]
    assert names == ["2000model.pth", "model.pt"]
    for record, model in zip(result["checkpoints"], (contraface, ours)):
        assert record["network"] == "iresnet18" and record["network_kwargs"] == TINY
        assert set(record["results"]) == {"lfw", "cfp_fp"}
        for target in ("lfw", "cfp_fp"):
            data_set = verification.load_bin(bins / f"{target}.bin", (112, 112))
            acc1, _, acc2, std2, xnorm, _ = verification.test(
                data_set, model, 40, 10, device="cpu"
            )
            got = record["results"][target]
            assert got["acc2"] == pytest.approx(acc2, abs=1e-12)
            assert got["acc1"] == pytest.approx(acc1, abs=1e-12)
            assert got["std2"] == pytest.approx(std2, abs=1e-12)
            assert got["xnorm"] == pytest.approx(xnorm, rel=1e-6)
            assert got["acc2"] >= 0.8  # the synthetic pairs are easy: the numbers are not noise
        accuracies = [record["results"][t]["acc2"] for t in ("lfw", "cfp_fp")]
        assert record["mean_acc2"] == pytest.approx(np.mean(accuracies))
    assert result["checkpoints"][0]["step"] == 2000
    table = capsys.readouterr().out
    assert "2000model.pth" in table and "mean" in table and "cfp_fp" in table
    assert f"{result['checkpoints'][1]['results']['lfw']['acc2'] * 100:.2f}" in table
    # The results are never overwritten silently.
    with pytest.raises(FileExistsError, match="--force"):
        evaluation.main(argv)
    argv[argv.index("lfw,cfp_fp,agedb_30")] = "lfw"
    evaluation.main(argv + ["--force"])
    assert json.loads(out.read_text())["targets"] == ["lfw"]


def test_evaluation_skips_non_backbone_files_in_folder(tmp_path, bins):
    ckpts = tmp_path / "ckpts"
    ckpts.mkdir()
    export_backbone(tiny(1), ckpts / "model.pt", "iresnet18", TINY)
    torch.save({"kernel": torch.randn(16, 4)}, ckpts / "2000header.pth")  # ElasticFace head file
    result = evaluation.main(["--weights", str(ckpts), "--data-dir", str(bins), "--targets", "lfw",
                              "--device", "cpu"])
    by_name = {r["name"]: r for r in result["checkpoints"]}
    assert "error" in by_name["2000header.pth"] and "results" not in by_name["2000header.pth"]
    assert by_name["model.pt"]["results"]["lfw"]["acc2"] >= 0.8


def test_evaluation_single_checkpoint_with_explicit_network(tmp_path, bins):
    model = tiny(4)
    torch.save(model.state_dict(), tmp_path / "backbone.pth")  # insightface layout
    result = evaluation.main(["--weights", str(tmp_path / "backbone.pth"), "--data-dir", str(bins),
                              "--targets", "lfw", "--network", "iresnet18", "--width", "8",
                              "--num-features", "16", "--device", "cpu"])
    data_set = verification.load_bin(bins / "lfw.bin")
    acc2 = verification.test(data_set, model, 128, 10, device="cpu")[2]
    assert result["checkpoints"][0]["results"]["lfw"]["acc2"] == pytest.approx(acc2, abs=1e-12)
    # A wrong architecture for a single file is an error, not a skipped row.
    with pytest.raises(Exception, match="iresnet18"):
        evaluation.main(["--weights", str(tmp_path / "backbone.pth"), "--data-dir", str(bins),
                         "--targets", "lfw", "--network", "iresnet34", "--width", "8",
                         "--num-features", "16", "--device", "cpu"])


def test_weights_are_checked_before_any_bin_is_decoded(tmp_path, bins, monkeypatch):
    decoded = []
    real = verification.load_pairs
    monkeypatch.setattr(verification, "load_pairs", lambda *a, **k: decoded.append(a[0]) or real(*a, **k))
    idx = tmp_path / "train.idx"
    idx.write_text("0\t0\n1\t3152\n")  # not a checkpoint at all: not reported as "unsafe"
    with pytest.raises(CheckpointError, match="train.idx: not a PyTorch checkpoint") as info:
        evaluation.main(["--weights", str(idx), "--data-dir", str(bins), "--targets", "lfw", "--device", "cpu"])
    assert not isinstance(info.value, UnsafeCheckpointError) and decoded == []
    # a run folder: the first file is loaded before the bins are decoded, and they are decoded once
    run = tmp_path / "run"
    run.mkdir()
    order = []
    real_load = evaluation.load_backbone
    monkeypatch.setattr(evaluation, "load_backbone", lambda p, *a, **k: order.append(p) or real_load(p, *a, **k))
    monkeypatch.setattr(verification, "load_pairs", lambda *a, **k: order.append(a[0]) or real(*a, **k))
    for step in (1, 2):
        export_backbone(tiny(step), run / f"backbone-{step}.pth", "iresnet18", TINY)
    evaluation.main(["--weights", str(run), "--data-dir", str(bins), "--targets", "lfw,cfp_fp", "--device", "cpu"])
    names = [os.path.basename(str(p)) for p in order]
    assert names == ["backbone-1.pth", "lfw.bin", "cfp_fp.bin", "backbone-2.pth"]


def test_evaluation_no_bins_is_an_error(tmp_path):
    export_backbone(tiny(1), tmp_path / "model.pt", "iresnet18", TINY)
    with pytest.raises(FileNotFoundError, match="none of the targets"):
        evaluation.main(["--weights", str(tmp_path / "model.pt"), "--data-dir", str(tmp_path),
                         "--device", "cpu"])


def test_verify_embeddings_matches_verification_test(bins):
    # One path: test(), verify() (the callback's and eval.evaluation's) and verify_embeddings on
    # the same embeddings give the same metrics.
    model = tiny(5)
    data_set = verification.load_bin(bins / "lfw.bin")
    acc1, std1, acc2, std2, xnorm, emb_list = verification.test(
        data_set, model, 40, 10, device="cpu"
    )
    got = verification.verify_embeddings(emb_list, data_set[1], 10)
    assert (got["acc1"], got["std1"], got["acc2"], got["std2"]) == (acc1, std1, acc2, std2)
    assert got["xnorm"] == pytest.approx(xnorm)
    embedder = Embedder.from_module(model, batch_size=40)
    images, issame = verification.load_pairs(bins / "lfw.bin")
    metrics, (embs, embs_flip) = verification.verify(embedder, images, issame, 10, batch_size=40)
    assert (metrics["acc1"], metrics["acc2"], metrics["std2"]) == (acc1, acc2, std2)
    assert np.array_equal(embs, emb_list[0]) and np.array_equal(embs_flip, emb_list[1])


def test_embed_faces_mirrors_each_batch():
    model = tiny(7)
    embedder = Embedder.from_module(model, batch_size=3)
    rng = np.random.default_rng(2)
    images = torch.from_numpy(rng.integers(0, 256, size=(7, 3, 112, 112), dtype=np.uint8))
    embs, embs_flip = embed_faces(embedder, images.split(3), 7)
    assert embs.shape == embs_flip.shape == (7, 16) and embs.dtype == np.float32
    np.testing.assert_array_equal(embs, embedder(images))
    np.testing.assert_array_equal(embs_flip, embedder(torch.flip(images, dims=[3])))
    plain, none = embed_faces(embedder, images.split(3), 7, flip=False)
    assert none is None and np.array_equal(plain, embs)
    with pytest.raises(ValueError, match="held 6 faces, 7 were announced"):
        embed_faces(embedder, images[:6].split(3), 7)
    empty, empty_flip = embed_faces(embedder, [], 0)
    assert empty.shape == empty_flip.shape == (0, 16)


def test_format_table():
    records = [
        {
            "name": "a.pt",
            "results": {"lfw": {"acc2": 0.99}, "cfp_fp": {"acc2": 0.9}},
            "mean_acc2": 0.945,
        },
        {"name": "bad.pth", "error": "x"},
    ]
    lines = evaluation.format_table(records, ["lfw", "cfp_fp"]).splitlines()
    assert lines[0].split() == ["checkpoint", "lfw", "cfp_fp", "mean"]
    assert lines[2].split() == ["a.pt", "99.00", "90.00", "94.50"]
    assert lines[3].split() == ["bad.pth", "-", "-", "error"]


def test_targets_spread_over_devices_give_the_same_numbers(bins):
    # The multi-GPU path (one thread and one model copy per device, targets round-robin) run with
    # two CPU "devices": the same numbers as one device, every target once.
    from tqdm import tqdm

    model = tiny(6)
    sets = {t: verification.load_pairs(bins / f"{t}.bin") for t in ("lfw", "cfp_fp")}
    cpu = torch.device("cpu")
    with tqdm(disable=True) as bar:
        one = evaluation._evaluate_sets(evaluation._device_embedders(model, [cpu], 40), sets, 10, bar)
        two = evaluation._evaluate_sets(evaluation._device_embedders(model, [cpu, cpu], 40), sets, 10, bar)
    assert list(two) == ["lfw", "cfp_fp"]
    for target in sets:
        assert two[target]["acc2"] == one[target]["acc2"]
        assert two[target]["xnorm"] == pytest.approx(one[target]["xnorm"], rel=1e-6)


# -- run folders -------------------------------------------------------------------------------


def test_run_folder_each_step_cached_and_best(tmp_path, bins, monkeypatch, capsys, one_torch_thread):
    run = tmp_path / "run"
    run.mkdir()
    models = {100: tiny(11), 200: tiny(12), 300: tiny(13)}
    torch.save(models[100].state_dict(), run / "backbone-100.pth")  # what train.py writes per evaluation
    torch.save(models[200].state_dict(), run / "backbone-200.pth")
    torch.save({"format": "junk"}, run / "checkpoint-200.pt")  # same step: the backbone file is used
    torch.save({f"backbone.{k}": v for k, v in models[300].state_dict().items()}, run / "300model.pth")
    loads = []
    real = evaluation.load_backbone
    monkeypatch.setattr(evaluation, "load_backbone", lambda path, *a, **k: loads.append(path) or real(path, *a, **k))
    argv = ["--weights", str(run), "--data-dir", str(bins), "--targets", "lfw,cfp_fp", "--batch-size", "40",
            "--device", "cpu"]
    result = evaluation.main(argv)
    assert [r["name"] for r in result["checkpoints"]] == ["backbone-100.pth", "backbone-200.pth", "300model.pth"]
    assert [r["step"] for r in result["checkpoints"]] == [100, 200, 300] and len(loads) == 3
    acc = {(step, t): verification.test(verification.load_bin(bins / f"{t}.bin"), m, 40, 10, device="cpu")[2]
           for step, m in models.items() for t in ("lfw", "cfp_fp")}
    for record in result["checkpoints"]:
        for t in ("lfw", "cfp_fp"):
            assert record["results"][t]["acc2"] == pytest.approx(acc[record["step"], t], abs=1e-12)
    for t in ("lfw", "cfp_fp"):
        step = max(models, key=lambda s: (acc[s, t], -s))  # the highest; the earliest on ties
        assert result["best"][t]["step"] == step and result["best"][t]["value"] == pytest.approx(acc[step, t])
    means = {s: (acc[s, "lfw"] + acc[s, "cfp_fp"]) / 2 for s in models}
    best_mean = max(models, key=lambda s: (means[s], -s))
    assert result["best"]["mean"]["step"] == best_mean
    table = capsys.readouterr().out
    assert "backbone-200.pth" in table and f"{means[best_mean] * 100:.2f} @{best_mean}" in table

    # again: everything from the cache beside the weights, nothing loaded
    loads.clear()
    again = evaluation.main(argv)
    assert loads == [] and (run / "verification_results.json").is_file()
    assert [r["results"] for r in again["checkpoints"]] == [r["results"] for r in result["checkpoints"]]
    assert all(r["cached_targets"] == 2 for r in again["checkpoints"])
    # a changed file, a new step and a new target: only what is missing is evaluated
    os.utime(run / "backbone-100.pth", ns=(1, 1))
    torch.save(tiny(14).state_dict(), run / "backbone-400.pth")
    write_bin(bins / "agedb_30.bin", seed=12)
    evaluation.main(argv[:5] + ["lfw,cfp_fp,agedb_30"] + argv[6:])
    assert [os.path.basename(p) for p in loads] == ["backbone-100.pth", "backbone-200.pth", "300model.pth",
                                                    "backbone-400.pth"]
    loads.clear()
    final = evaluation.main(argv[:5] + ["lfw,cfp_fp,agedb_30"] + argv[6:])
    assert loads == [] and [r["cached_targets"] for r in final["checkpoints"]] == [3, 3, 3, 3]
