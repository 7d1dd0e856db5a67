"""train.py end to end on tiny synthetic data: runs, exact resume after SIGKILL, DDP, clear errors."""

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train
from runs import assert_resume_after_sigkill_is_exact
from training import checkpoints
from utils import run_files
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


def args(data_dir, output, *extra):
    sets = [f"rec={data_dir}", f"output={output}", *TINY, *extra]
    return ["--dataset", "synthetic"] + [x for s in sets for x in ("--set", s)]


def file_digest(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def state_of(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    return checkpoint["backbone"], checkpoint["head"], checkpoint["optimizer"]["state"]


def test_training_runs_logs_and_exports(data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(data_dir, out, "save_step=4"))
    assert [step for step, _ in run_files.list_checkpoints(out)] == [16, 18]  # keep_checkpoints=2
    config = json.loads((out / "config.json").read_text())
    assert config["num_classes"] == 8 and config["network_width"] == 8
    log = (out / "training.log").read_text()
    assert "[2][E 0]" in log and "-L1" in log and "-LC" in log and "-margin" in log
    assert "[6][lfw]Accuracy-Flip" in log and "[18][lfw]Accuracy-Highest" in log
    assert list((out / "tensorboard").iterdir())
    from backbones import get_backbone

    backbone = get_backbone("iresnet18", width=8, num_features=32)
    load_weights(backbone, str(out / "backbone.pth"))  # insightface-style plain state dict
    last = checkpoints.read_checkpoint(str(out / "checkpoint-18.pt"))
    assert last["step"] == 18 and last["head"]["contra.margin"] != 0
    torch.testing.assert_close(backbone.state_dict(), last["backbone"], rtol=0, atol=0)


def test_resume_after_sigkill_is_bitwise_exact(data_dir, tmp_path):
    # killed mid-epoch 0 (6 steps per epoch), compared at the last step
    assert_resume_after_sigkill_is_exact(
        "train.py", train.main, lambda out, *sets: args(data_dir, out, *sets), tmp_path, 18, state_of
    )


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
    saved = {path: file_digest(path) for _, path in run_files.list_checkpoints(out)}
    # a head scale of 1e39 overflows float32: the logits, hence the loss, are not finite
    message = r"non-finite loss at step 7 .*Last good checkpoint: .*checkpoint-6.pt"
    with pytest.raises(FloatingPointError, match=message):
        train.main(args(data_dir, out, "num_epoch=2", "shrink_epoch=[1]", "s=1e39") + ["--resume", "auto"])
    assert {path: file_digest(path) for _, path in run_files.list_checkpoints(out)} == saved


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
    checkpoint = checkpoints.read_checkpoint(str(out / "checkpoint-12.pt"))
    assert checkpoint["world_size"] == 2 and len(checkpoint["ranks"]) == 2
    # buffers are per rank (broadcast_buffers=False, as the reference): BN statistics differ
    a, b = (r["buffers"]["backbone.bn1.running_mean"] for r in checkpoint["ranks"])
    assert not torch.equal(a, b)


def log_lines(out, pattern):
    return [line for line in (out / "training.log").read_text().splitlines() if pattern in line]


def test_init_weights_starts_at_start_epoch_with_fresh_optimizer(data_dir, tmp_path):
    """The paper's recipe: stage 1 alone, then ContraFace from its weights at a later epoch."""
    stage1 = tmp_path / "stage1"
    train.main(args(data_dir, stage1, "method=single", "num_epoch=1"))
    stage2 = tmp_path / "stage2"
    train.main(args(data_dir, stage2, f"init_weights={stage1 / 'checkpoint-6.pt'}", "start_epoch=1"))
    assert "init_weights: backbone and class centers from" in (stage2 / "training.log").read_text()
    # the step counter, LR schedule and stage switch begin at epoch 1: step 6, lr 0.1 * 0.1, stage 2
    first = log_lines(stage2, "-Loss")[0]
    assert first.split("]-", 1)[1].startswith("[8][E 1]") and "-LR 0.010000" in first and "-LC" in first
    assert [step for step, _ in run_files.list_checkpoints(stage2)] == [12, 18]
    start = checkpoints.read_checkpoint(str(stage2 / "checkpoint-12.pt"))
    assert start["step"] == 12 and start["epoch"] == 2
    # a plain insightface backbone.pth has no centers: the head starts fresh
    plain = tmp_path / "plain"
    train.main(args(data_dir, plain, f"init_weights={stage1 / 'backbone.pth'}", "start_epoch=2"))
    assert "class centers start fresh (the file has none)" in (plain / "training.log").read_text()


def test_init_weights_reads_the_original_contraface_layout(data_dir, tmp_path):
    from backbones import get_backbone
    from losses import get_head

    backbone = get_backbone("iresnet18", width=8, num_features=32)
    kernel = get_head("arcface", 32, 8).kernel.detach() + 1.0
    original = {**{f"backbone.{k}": v for k, v in backbone.state_dict().items()}, "header.kernel": kernel}
    torch.save(original, tmp_path / "90976model.pth")
    out = tmp_path / "run"
    train.main(args(data_dir, out, f"init_weights={tmp_path / '90976model.pth'}", "start_epoch=2", "method=single",
                    "lr=0"))
    head = checkpoints.read_checkpoint(str(out / "checkpoint-18.pt"))["head"]
    torch.testing.assert_close(head["head.kernel"], kernel, rtol=0, atol=0)  # lr 0: the loaded centers


def test_init_weights_of_another_architecture_names_the_file(data_dir, tmp_path):
    from backbones import get_backbone

    other = tmp_path / "other.pth"
    torch.save(get_backbone("iresnet18", width=16, num_features=32).state_dict(), other)
    with pytest.raises(Exception, match="other.pth"):
        train.main(args(data_dir, tmp_path / "run", f"init_weights={other}"))
    with pytest.raises(ConfigError, match="init_weights '/nonexistent.pth': file not found"):
        train.main(args(data_dir, tmp_path / "run2", "init_weights=/nonexistent.pth"))


def test_keep_all_checkpoints_and_a_backbone_per_evaluation(data_dir, tmp_path):
    out = tmp_path / "run"
    train.main(args(data_dir, out, "save_step=4", "keep_checkpoints=0", "keep_backbones=2"))
    assert [step for step, _ in run_files.list_checkpoints(out)] == [4, 8, 12, 16, 18]
    assert [step for step, _ in run_files.list_backbones(out)] == [12, 18]  # evaluated at 6, 12, 18
    last = checkpoints.read_checkpoint(str(out / "checkpoint-18.pt"))
    snapshot = torch.load(out / "backbone-18.pth", weights_only=True)
    torch.testing.assert_close(snapshot, last["backbone"], rtol=0, atol=0)
    # the paper's number: the mean over targets of each target's best accuracy so far
    highest = [float(line.rsplit(" ", 1)[1]) for line in log_lines(out, "[lfw]Accuracy-Highest")]
    mean_highest = [float(line.rsplit(" ", 1)[1]) for line in log_lines(out, "[mean]Accuracy-Highest")]
    assert mean_highest == highest and len(highest) == 3


@pytest.mark.parametrize("network", ["ir_18", "ir_se_evolve_50"])
def test_ir_backbones_train_with_contraface_and_export(data_dir, tmp_path, network):
    # AdaFace's / face.evoLVe's IR: stage 1 and ContraFace's two dropout views (epoch 1 on)
    out = tmp_path / "run"
    train.main(args(data_dir, out, f"network={network}", "num_epoch=2", "shrink_epoch=[2]"))
    log = (out / "training.log").read_text()
    assert "[12][E 1]" in log and "-LC" in log  # the contrastive loss of the double branch
    from eval.embedder import load_backbone

    backbone, meta = load_backbone(str(out / "backbone.pth"))
    assert meta["network"] == network and meta["network_kwargs"] == {"width": 8, "num_features": 32}
    last = checkpoints.read_checkpoint(str(out / "checkpoint-12.pt"))
    torch.testing.assert_close(backbone.state_dict(), last["backbone"], rtol=0, atol=0)
