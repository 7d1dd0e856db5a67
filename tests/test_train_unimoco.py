"""train_unimoco.py (FaceCL's command line) end to end on tiny synthetic data: runs, exact resume, weights."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import train_unimoco
from backbones import get_backbone
from runs import assert_resume_after_sigkill_is_exact
from training import checkpoints
from utils import run_files
from utils.checkpoint import load_weights
from utils.config import ConfigError

ROOT = Path(__file__).resolve().parents[1]

# 48 images of 8 identities, batch 8 in groups of 2: 6 steps per epoch, 2 epochs; queue of 16
TINY = [
    "network_width=8",
    "embedding_size=32",
    "moco_dim=16",
    "batch_size=8",
    "moco_k=16",
    "num_epoch=2",
    "num_workers=0",
    "frequent=2",
    "eval_batch_size=16",
    "val_targets=['lfw']",
    "augmentation=MoCo2",
]


def args(data_dir, output, *extra):
    sets = [f"rec={data_dir}", f"output={output}", *TINY, *extra]
    return ["configs/synthetic_unimoco_cpu"] + [x for s in sets for x in ("--set", s)]


def state_of(path):
    checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    buffers = checkpoint["ranks"][0]["buffers"]
    return checkpoint["backbone"], checkpoint["head"], checkpoint["optimizer"]["state"], buffers


def test_config_argument_forms(tmp_path):
    preset = str(ROOT / "configs" / "synthetic_unimoco_cpu.py")
    for form in ("configs/synthetic_unimoco_cpu", "configs/synthetic_unimoco_cpu.py", "synthetic_unimoco_cpu", preset):
        assert os.path.samefile(train_unimoco.resolve_config(form), preset), form
    own = tmp_path / "mine.py"
    own.write_text("")
    assert train_unimoco.resolve_config(str(tmp_path / "mine")) == str(own)
    with pytest.raises(ConfigError, match="config 'configs/nope' not found .*presets: .*ms1mv3_r50_unimoco"):
        train_unimoco.resolve_config("configs/nope")
    parsed = train_unimoco.parse_args(["configs/ms1mv3_r50_unimoco", "--local_rank=3", "--resume", "auto"])
    assert train_unimoco.train_argv(parsed)[2:] == ["--resume", "auto", "--local-rank", "3"]


def test_training_runs_logs_and_exports(data_dir, tmp_path):
    out = tmp_path / "run"
    train_unimoco.main(args(data_dir, out, "save_step=4", "num_epoch=1"))
    log = (out / "training.log").read_text()
    assert "[2][E 0]" in log and "-AvgPos" in log and "-Q_items" in log and "-Q_balance" in log
    assert '"method": "unimoco"' in log and "[6][lfw]Accuracy-Flip" in log
    assert [step for step, _ in run_files.list_checkpoints(out)] == [4, 6]
    last = checkpoints.read_checkpoint(str(out / "checkpoint-6.pt"))
    head = last["head"]
    # 6 steps of 8 keys through a queue of 16: the pointer is back at 0, every slot labelled
    assert head["queue_ptr"].item() == 0 and (head["label_queue"] >= 0).all()
    torch.testing.assert_close(head["queue"].norm(dim=0), torch.ones(16))
    assert {"encoder_k.conv1.weight", "projection_q.weight", "projection_k.weight"} <= head.keys()
    backbone = get_backbone("iresnet18", width=8, num_features=32)
    load_weights(backbone, str(out / "backbone.pth"))  # the query encoder, insightface-style
    torch.testing.assert_close(backbone.state_dict(), last["backbone"], rtol=0, atol=0)


@pytest.mark.slow
def test_resume_after_sigkill_is_bitwise_exact(data_dir, tmp_path):
    # killed mid-epoch 0 (6 steps per epoch); compared: weights (query and key encoders, projections),
    # queues and pointer, optimizer, buffers
    assert_resume_after_sigkill_is_exact(
        "train_unimoco.py", train_unimoco.main, lambda out, *sets: args(data_dir, out, *sets), tmp_path, 12, state_of
    )


def test_load_weights_takes_facecl_query_encoder(tmp_path):
    from methods.unimoco import UniMoCo

    torch.manual_seed(0)
    model = UniMoCo(get_backbone("iresnet18", width=4, num_features=16), embedding_size=16, dim=8, K=16)
    with torch.no_grad():
        for p in model.backbone.parameters():
            p.add_(1.0)  # the query encoder now differs from the key encoder
    # FaceCL's model_{epoch}.pt: model.module.state_dict() with the query encoder as encoder_q
    facecl = {k.replace("backbone.", "encoder_q.", 1): v for k, v in model.state_dict().items()}
    torch.save(facecl, tmp_path / "model_3.pt")
    backbone = get_backbone("iresnet18", width=4, num_features=16)
    meta = load_weights(backbone, str(tmp_path / "model_3.pt"))
    assert meta["format"] == "facecl-unimoco"
    torch.testing.assert_close(backbone.state_dict(), model.backbone.state_dict(), rtol=0, atol=0)
    # the evaluators' loader infers the architecture from the query encoder's keys
    from eval.embedder import load_backbone

    built, meta = load_backbone(str(tmp_path / "model_3.pt"))
    assert meta["network"] == "iresnet18"
    torch.testing.assert_close(built.state_dict(), model.backbone.state_dict(), rtol=0, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("launcher", ["torch.distributed.run", "torch.distributed.launch"])
def test_facecl_command_two_processes_on_cpu(data_dir, tmp_path, launcher):
    """FaceCL's command as written (launch passes --local-rank), torchrun too: gloo, one shared queue."""
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", launcher, "--nproc_per_node=2", "train_unimoco.py",
               *args(data_dir, out, "batch_size=4", "num_epoch=1")]
    subprocess.run(command, cwd=ROOT, check=True, timeout=600)
    checkpoint = checkpoints.read_checkpoint(str(out / "checkpoint-6.pt"))
    assert checkpoint["world_size"] == 2
    a, b = (r["buffers"] for r in checkpoint["ranks"])
    # the queue is global (every rank enqueues all ranks' keys); BN statistics stay per rank
    assert torch.equal(a["queue"], b["queue"]) and torch.equal(a["label_queue"], b["label_queue"])
    assert a["queue_ptr"].item() == (6 * 8) % 16 and (a["label_queue"] >= 0).all()
    assert not torch.equal(a["encoder_k.bn1.running_mean"], b["encoder_k.bn1.running_mean"])


def test_unimoco_trains_an_ir_backbone(data_dir, tmp_path):
    out = tmp_path / "run"
    train_unimoco.main(args(data_dir, out, "num_epoch=1", "network=ir_se_18"))
    assert "[6][lfw]Accuracy-Flip" in (out / "training.log").read_text()
    backbone = get_backbone("ir_se_18", width=8, num_features=32)
    load_weights(backbone, str(out / "backbone.pth"))
