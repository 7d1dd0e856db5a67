"""Two gloo processes under torchrun give the one-process features and results, bit for bit.

eval.extract gives each rank whole batches of the one-process run, so every face is embedded in
the same batch as without torchrun; the features are all-gathered as float32 bits. Both runs use
one thread per process (torchrun's default for several processes), the same kernels.
"""

import json
import os
import socket
import subprocess
import sys

import numpy as np
import pytest
import torch

from backbones import get_backbone
from runs import ROOT
from tools import make_synthetic, make_synthetic_ijb, make_synthetic_megaface
from utils.checkpoint import export_backbone

pytestmark = pytest.mark.slow

WORKER = """
import sys
import numpy as np, torch
from backbones import get_backbone
from eval.embedder import Embedder
from eval.extract import extract_features, finish_distributed, iter_features, launch_env, open_face_source

env = launch_env()
torch.manual_seed(0)
embed = Embedder.from_module(get_backbone("iresnet18", width=8, num_features=32).eval(), device="cpu", batch_size=4)
source = open_face_source(sys.argv[1])
embs, flips = extract_features(embed, source, batch_size=4, env=env, workers=2)
# blocks of one batch per rank: the last block leaves rank 1 without a share
blocks = list(iter_features(embed, source, batch_size=4, flip=False, env=env, workers=0, chunk_batches=1))
rank = 0 if env is None else env.rank
np.savez(f"{sys.argv[2]}.rank{rank}.npz", embs=embs, flips=flips, starts=[s for s, _, _ in blocks],
         blocks=np.concatenate([b for _, b, _ in blocks]))
finish_distributed(env)
"""


def free_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run(args, processes=1):
    """``python args`` (one process) or ``torchrun --nproc_per_node=processes args``, one thread each."""
    launcher = [] if processes == 1 else ["-m", "torch.distributed.run", f"--nproc_per_node={processes}",
                                          "--master_addr=127.0.0.1", f"--master_port={free_port()}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([sys.executable, *launcher, *map(str, args)], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("weights") / "tiny.pt"
    export_backbone(get_backbone("iresnet18", width=8, num_features=32), path, "iresnet18",
                    {"width": 8, "num_features": 32})
    return path


def test_extract_features_on_two_processes_is_one_process(tmp_path):
    make_synthetic.main(["--output", str(tmp_path / "rec"), "--num-ids", "3", "--images-per-id", "3",
                         "--targets", "train", "--workers", "1", "--no-progress"])
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    run([script, tmp_path / "rec", tmp_path / "one"])
    run([script, tmp_path / "rec", tmp_path / "two"], processes=2)
    one = np.load(tmp_path / "one.rank0.npz")
    assert one["embs"].shape == (9, 32) and one["starts"].tolist() == list(range(9))[::4]  # a block per batch
    for rank in (0, 1):  # every rank holds every feature, in source order
        two = np.load(tmp_path / f"two.rank{rank}.npz")
        assert np.array_equal(two["embs"], one["embs"]) and np.array_equal(two["flips"], one["flips"])
        assert two["starts"].tolist() == [0, 8] and np.array_equal(two["blocks"], one["embs"])


@pytest.fixture(scope="module")
def ijb_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("ijb")
    make_synthetic_ijb.main(["--output", str(root), "--targets", "IJBC", "--subjects", "6", "--templates", "3",
                             "--max-medias", "2", "--max-frames", "2", "--profile", "lfw"])
    return root


def ijb_args(weights, root, out, *extra):
    return ["-m", "eval.ijb.ijb_eval", "--weights", weights, "--data-root", root, "--target", "IJBC",
            "--output", out, "--mode", "both", "--test-modes", "N1D1F1,N0D0F0", "--batch-size", "4",
            "--num-workers", "2", "--device", "cpu", *extra]


def test_ijb_cli_on_two_processes_is_one_process(ijb_tree, weights, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    run(ijb_args(weights, ijb_tree, one))
    printed = run(ijb_args(weights, ijb_tree, two), processes=2)
    assert printed.count("IJBC 1:1 verification") == 1  # rank 0 alone reports
    results = [json.loads((out / "IJBC_tiny_both.json").read_text()) for out in (one, two)]
    assert results[0]["1v1"] == results[1]["1v1"] and results[0]["1vN"] == results[1]["1vN"]
    features = [np.load(r["feature_cache"]) for r in results]
    assert features[0]["embs"].shape[0] == results[0]["num_images"]
    for key in ("embs", "embs_flip"):
        assert np.array_equal(features[0][key], features[1][key]), key
    assert sorted(os.listdir(one)) == sorted(os.listdir(two))
    assert sorted(os.listdir(one / "cache")) == sorted(os.listdir(two / "cache"))
    # a second run reads rank 0's cache: every rank skips the extraction together
    run(ijb_args(weights, ijb_tree, two, "--force"), processes=2)
    again = json.loads((two / "IJBC_tiny_both.json").read_text())
    assert again["features_from_cache"] is True and again["1v1"] == results[0]["1v1"]


def test_ijb_run_folder_on_two_processes_is_one_process(ijb_tree, weights, tmp_path):
    steps = tmp_path / "run"
    steps.mkdir()
    for step in (2, 4):
        (steps / f"backbone-{step}.pth").write_bytes(weights.read_bytes())
    one, two = tmp_path / "one", tmp_path / "two"
    run(ijb_args(steps, ijb_tree, one, "--mode", "1v1"))
    run(ijb_args(steps, ijb_tree, two, "--mode", "1v1"), processes=2)
    rows = [json.loads((out / "IJBC_steps_1v1.json").read_text())["steps"] for out in (one, two)]
    assert [r["scores"] for r in rows[0]] == [r["scores"] for r in rows[1]] and len(rows[0]) == 2


@pytest.fixture(scope="module")
def megaface_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("megaface")
    make_synthetic_megaface.main(["--output", str(root), "--identities", "3", "--images-per-id", "3",
                                  "--distractors", "12", "--sizes", "10", "12", "--unaligned", "1",
                                  "--facescrub-noises", "1", "--megaface-noises", "1"])
    return root


def test_megaface_cli_on_two_processes_is_one_process(megaface_tree, weights, tmp_path):
    outs = {n: tmp_path / f"{n}" for n in (1, 2)}
    for n, out in outs.items():
        run(["-m", "eval.megaface.megaface_eval", "--weights", weights, "--output", out,
             "--facescrub-root", megaface_tree / "facescrub_images",
             "--megaface-root", megaface_tree / "megaface_images",
             "--num-workers", "2", "--batch-size", "4", "--max-rank", "12", "--fars", "0.1", "--device", "cpu"],
            processes=n)
    files = {n: sorted(p.relative_to(out) for p in out.rglob("*.bin")) for n, out in outs.items()}
    assert files[1] == files[2] and len(files[1]) == 9 + 12
    for rel in files[1]:
        assert (outs[1] / rel).read_bytes() == (outs[2] / rel).read_bytes(), rel
    results = [json.loads((out / "megaface_tiny.json").read_text()) for out in outs.values()]
    assert results[0]["sizes"] == results[1]["sizes"] and results[0]["extraction"] == results[1]["extraction"]


def test_all_to_all_cli_on_two_processes_is_one_process(weights, tmp_path):
    from tools import make_synthetic_mfr

    data = tmp_path / "mfr"
    make_synthetic_mfr.main(["--output", str(data), "--identities", "8", "--images-per-id", "3",
                             "--mask-identities", "4", "--workers", "1", "--no-progress"])
    outs = {n: tmp_path / f"out{n}" for n in (1, 2)}
    for n, out in outs.items():
        printed = run(["-m", "eval.all_to_all", "--weights", weights, "--data", data / "all", "--groups",
                       data / "groups_age.txt", "--fars", "0.1", "--batch-size", "4", "--workers", "2",
                       "--device", "cpu", "--output", out], processes=n)
        assert printed.count("TAR") >= 1
    tables = [json.loads((out / "all_to_all_tiny.json").read_text()) for out in outs.values()]
    assert tables[0] == tables[1]
    caches = [sorted(out.glob("features_*.npz")) for out in outs.values()]
    assert [p.name for p in caches[0]] == [p.name for p in caches[1]] and caches[0]
    for a, b in zip(caches[0], caches[1]):
        one, two = np.load(a), np.load(b)
        assert all(np.array_equal(one[k], two[k]) for k in one.files)
