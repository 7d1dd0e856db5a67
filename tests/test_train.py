"""train.py end to end on tiny synthetic data: runs, exact resume after SIGKILL, DDP, clear errors."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import train
from tools import make_synthetic
from utils import train_state
from utils.checkpoint import load_weights
from utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# 48 training images of 8 identities: 6 steps of batch 8 per epoch; the switch to the double
# branch happens at epoch index 1 (shrink_epoch[0] - 1), so every run covers both stages.
TINY = [
    "network_width=8",
    "embedding_size=32",
    "batch_size=8",
    "num_epoch=3",
    "shrink_epoch=[2, 3]",
    "num_workers=0",
    "frequent=2",
    "eval_batch_size=16",
    "val_targets=['lfw']",
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("synthetic")
    make_synthetic.main(
        ["--output", str(out), "--num-ids", "8", "--images-per-id", "6", "--eval-ids", "8", "--pairs", "20",
         "--targets", "train,lfw", "--workers", "1", "--no-progress", "--force"]
    )
    return out


def args(data_dir, output, *extra):
    sets = [f"rec={data_dir}", f"output={output}", *TINY, *extra]
    return ["--dataset", "synthetic"] + [x for s in sets for x in ("--set", s)]


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def state_of(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["backbone"], checkpoint["head"], checkpoint["optimizer"]["state"]


def assert_bitwise_equal(a, b):
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_bitwise_equal(a[key], b[key])
        else:
            assert torch.equal(a[key], b[key]), key


def test_training_runs_logs_and_exports(data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(data_dir, out, "save_step=4"))
    assert [step for step, _ in train_state.list_checkpoints(out)] == [16, 18]  # keep_checkpoints=2
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 8 and config["network_width"] == 8
    log = (out / "training.log").read_text()
    assert "[2][E 0]" in log and "-L1" in log and "-LC" in log and "-margin" in log
    assert "[6][lfw]Accuracy-Flip" in log and "[18][lfw]Accuracy-Highest" in log
    assert list((out / "tensorboard").iterdir())
    from backbones import get_backbone

    backbone = get_backbone("iresnet18", width=8, num_features=32)
    load_weights(backbone, str(out / "backbone.pth"))  # insightface-style plain state dict
    last = train_state.read_checkpoint(str(out / "checkpoint-18.pt"))
    assert last["step"] == 18 and last["head"]["contra.margin"] != 0
    torch.testing.assert_close(backbone.state_dict(), last["backbone"], rtol=0, atol=0)


def test_resume_after_sigkill_is_bitwise_exact(data_dir, tmp_path):
    reference = tmp_path / "uninterrupted"
    train.main(args(data_dir, reference, "save_step=2"))

    killed = tmp_path / "killed"
    command = [sys.executable, "train.py", *args(data_dir, killed, "save_step=2")]
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not (killed / "checkpoint-4.pt").exists():  # mid-epoch 0 (6 steps per epoch)
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    steps_left = [step for step, _ in train_state.list_checkpoints(killed)]
    assert steps_left and max(steps_left) < 18

    train.main(args(data_dir, killed, "save_step=2") + ["--resume", "auto"])
    assert "resumed from" in (killed / "training.log").read_text()
    for a, b in zip(state_of(reference / "checkpoint-18.pt"), state_of(killed / "checkpoint-18.pt")):
        assert_bitwise_equal(a, b)


def test_refuses_to_overwrite_an_existing_run(data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(data_dir, out, "num_epoch=1", "shrink_epoch=[1]"))
    before = {p.name: file_digest(p) for p in out.iterdir() if p.is_file()}
    with pytest.raises(FileExistsError, match="already holds a training run; continue it with --resume auto"):
        train.main(args(data_dir, out, "num_epoch=1", "shrink_epoch=[1]"))
    assert {p.name: file_digest(p) for p in out.iterdir() if p.is_file()} == before


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(data_dir, out, "num_epoch=1", "shrink_epoch=[1]"))
    saved = {path: file_digest(path) for _, path in train_state.list_checkpoints(out)}
    # a head scale of 1e39 overflows float32: the logits, hence the loss, are not finite
    message = r"non-finite loss at step 7 .*Last good checkpoint: .*checkpoint-6.pt"
    with pytest.raises(FloatingPointError, match=message):
        train.main(args(data_dir, out, "num_epoch=2", "shrink_epoch=[1]", "s=1e39") + ["--resume", "auto"])
    assert {path: file_digest(path) for _, path in train_state.list_checkpoints(out)} == saved


def test_missing_data_dir_names_it_and_suggests_synthetic(tmp_path):
    message = r"'/nonexistent/faces' \(dataset 'emore', key `rec`\).*--dataset synthetic"
    with pytest.raises(FileNotFoundError, match=message):
        train.main(["--set", "rec=/nonexistent/faces", "--set", f"output={tmp_path}"])


def test_label_beyond_num_classes_is_reported(data_dir, tmp_path):
    with pytest.raises(ValueError, match=r"train.rec: 8 identity records .* but num_classes = 5"):
        train.main(args(data_dir, tmp_path / "run", "num_classes=5"))


def test_unknown_key_and_launcher_flags(data_dir):
    with pytest.raises(ConfigError, match="did you mean 'batch_size'"):
        train.main(["--set", "batchsize=3"])
    for flag in ("--local-rank", "--local_rank"):
        assert train.parse_args([f"{flag}=1"]).local_rank == 1


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torch.distributed.run", "torch.distributed.launch"])
def test_two_processes_on_cpu(data_dir, tmp_path, launcher):
    """torchrun, and the deprecated launch that passes --local-rank, both train with gloo."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", launcher, "--nproc_per_node=2", "train.py",
               *args(data_dir, out, "batch_size=4", "num_epoch=2", "shrink_epoch=[2]")]
    subprocess.run(command, cwd=ROOT, check=True, timeout=600)
    checkpoint = train_state.read_checkpoint(str(out / "checkpoint-12.pt"))
    assert checkpoint["world_size"] == 2 and len(checkpoint["ranks"]) == 2
    # buffers are per rank (broadcast_buffers=False, as the reference): BN statistics differ
    a, b = (r["buffers"]["backbone.bn1.running_mean"] for r in checkpoint["ranks"])
    assert not torch.equal(a, b)
