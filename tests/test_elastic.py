"""Elastic restarts: torchrun --max-restarts brings a 2-process gloo run back after a rank dies.

One rank SIGKILLs itself mid-epoch (once: a marker file keeps the restarted attempt alive);
torchrun tears the group down and starts it again, ``--resume auto`` continues from the newest
checkpoint, and the run ends with the same weights, bit for bit, as a run that never stopped.
The kill is injected by a small wrapper around train.py written here, not by train.py itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch

from runs import ROOT, assert_bitwise_equal
from test_train import args, state_of
from training import checkpoints
from utils import run_files

# 48 images, 4 per process and step: 6 steps per epoch, stage 2 from epoch 1, a checkpoint every 2 steps
RUN = ("batch_size=4", "num_epoch=2", "shrink_epoch=[2]", "save_step=2", "keep_checkpoints=0")
KILL_AT_STEP = 5  # mid-epoch 0, one step after checkpoint-4

WRAPPER = textwrap.dedent('''
    """train.py, except that rank KILL_RANK SIGKILLs itself after step KILL_AT_STEP, on the first attempt only."""
    import os, signal, sys, time
    sys.path.insert(0, os.environ["REPO"])
    attempt = os.environ["TORCHELASTIC_RESTART_COUNT"]
    with open(os.environ["ATTEMPTS"], "a") as f:
        f.write(f"{os.environ['RANK']} {attempt}\\n")
    if attempt != "0" and os.environ["RANK"] == os.environ["KILL_RANK"]:
        time.sleep(3)  # join late: the other rank reads this rank's address first (stale, if the store is shared)
    import train
    from utils.cli import run_cli

    log_step = train.CallBackLogging.__call__

    def dying(self, step, *rest):
        log_step(self, step, *rest)
        marker = os.environ["KILL_MARKER"]
        if step == int(os.environ["KILL_AT_STEP"]) and os.environ["RANK"] == os.environ["KILL_RANK"] \\
                and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)

    train.CallBackLogging.__call__ = dying
    run_cli(train.main, sys.argv[1:], extra=(FloatingPointError,))
''')


def torchrun(script, data, output, env, *extra):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *extra,
               str(script), "--resume", "auto", *args(data, output, *RUN)]
    return subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_killed_rank_is_restarted_and_the_run_ends_bit_identical(data_dir, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "REPO": str(ROOT), "KILL_AT_STEP": str(KILL_AT_STEP),
           "KILL_RANK": "1", "KILL_MARKER": str(tmp_path / "killed-once"), "ATTEMPTS": str(tmp_path / "attempts"),
           "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}  # a fresh store per attempt, as the README says
    wrapper = tmp_path / "train_dies_once.py"
    wrapper.write_text(WRAPPER)

    reference = tmp_path / "uninterrupted"
    done = torchrun(ROOT / "train.py", data_dir, reference, env)  # --resume auto on a new folder: starts
    assert done.returncode == 0, done.stderr[-3000:]

    elastic = tmp_path / "elastic"
    done = torchrun(wrapper, data_dir, elastic, env, "--max-restarts=3")
    assert done.returncode == 0, done.stderr[-3000:]
    assert (tmp_path / "killed-once").exists()  # rank 1 did die
    # one restart was enough: the restarted group connected at its first try
    assert sorted((tmp_path / "attempts").read_text().split("\n")[:-1]) == ["0 0", "0 1", "1 0", "1 1"]
    log = (elastic / "training.log").read_text()
    assert "resumed from" in log and "checkpoint-4.pt" in log.split("resumed from", 1)[1].splitlines()[0]
    assert log.count(f"[{KILL_AT_STEP}][E 0]") == 0  # frequent=2: step 5 is never logged; 4 and 6 are
    assert log.count("[4][E 0]") == 1 and log.count("[6][E 0]") == 1  # step 6 only by the restarted group

    steps = [step for step, _ in run_files.list_checkpoints(elastic)]
    assert steps == [2, 4, 6, 8, 10, 12]
    for a, b in zip(state_of(reference / "checkpoint-12.pt"), state_of(elastic / "checkpoint-12.pt")):
        assert_bitwise_equal(a, b)
    ranks_a = checkpoints.read_checkpoint(str(reference / "checkpoint-12.pt"))["ranks"]
    ranks_b = checkpoints.read_checkpoint(str(elastic / "checkpoint-12.pt"))["ranks"]
    for a, b in zip(ranks_a, ranks_b):  # every rank's BatchNorm statistics too
        assert_bitwise_equal(a["buffers"], b["buffers"])
    torch.testing.assert_close(torch.load(reference / "backbone.pth", weights_only=True),
                               torch.load(elastic / "backbone.pth", weights_only=True), rtol=0, atol=0)
