"""Test helpers: tiny synthetic data, bitwise comparison, a SIGKILL mid-run and the resume check, a toy backbone."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from tools import make_synthetic
from utils import run_files

ROOT = Path(__file__).resolve().parents[1]


def make_tiny_synthetic(out: Path) -> Path:
    """48 training images of 8 identities and a 20-pair lfw.bin in ``out``."""
    make_synthetic.main(
        ["--output", str(out), "--num-ids", "8", "--images-per-id", "6", "--eval-ids", "8", "--pairs", "20",
         "--targets", "train,lfw", "--workers", "1", "--no-progress", "--force"]
    )
    return out


def assert_bitwise_equal(a: dict, b: dict) -> None:
    """Nested dicts of tensors hold the same keys and bit-identical tensors."""
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], dict):
            assert_bitwise_equal(a[key], b[key])
        else:
            assert torch.equal(a[key], b[key]), key


def kill_when_saved(script: str, argv: list[str], checkpoint: Path, timeout: float = 300) -> None:
    """Run ``python script argv`` and SIGKILL it as soon as ``checkpoint`` exists."""
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    process = subprocess.Popen(
        [sys.executable, script, *argv], cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.time() + timeout
    while not checkpoint.exists():
        assert process.poll() is None, process.stderr.read().decode()
        assert time.time() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL


def assert_resume_after_sigkill_is_exact(
    script: str, main: Callable, run_args: Callable, tmp_path: Path, last_step: int, state_of: Callable
) -> None:
    """A run SIGKILLed once checkpoint-4 is saved and resumed with ``--resume auto`` ends, in
    ``state_of(checkpoint-<last_step>.pt)``, bit-identical to a run that never stopped.

    ``run_args(output, *sets)``: the command line of a run into ``output``; ``main`` runs it in-process.
    """
    reference, killed = tmp_path / "uninterrupted", tmp_path / "killed"
    main(run_args(reference, "save_step=2"))
    kill_when_saved(script, run_args(killed, "save_step=2"), killed / "checkpoint-4.pt")
    steps_left = [step for step, _ in run_files.list_checkpoints(killed)]
    assert steps_left and max(steps_left) < last_step

    main(run_args(killed, "save_step=2") + ["--resume", "auto"])
    assert "resumed from" in (killed / "training.log").read_text()
    last = f"checkpoint-{last_step}.pt"
    for a, b in zip(state_of(reference / last), state_of(killed / last)):
        assert_bitwise_equal(a, b)


class ToyBackbone(nn.Module):
    """A tiny backbone with the iresnet interface (forward, double_forward, dropout_p) for method tests."""

    def __init__(self, dim: int = 16, hidden: int = 32, features: int = 8):
        super().__init__()
        self.trunk = nn.Linear(dim, hidden)
        self.dropout = nn.Dropout(0.0)
        self.fc = nn.Linear(hidden, features)

    @property
    def dropout_p(self) -> float:
        return self.dropout.p

    @dropout_p.setter
    def dropout_p(self, p: float) -> None:
        self.dropout.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.relu(self.trunk(x))))

    def double_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        flat = torch.relu(self.trunk(x))  # one trunk pass, two dropout masks
        return self.fc(self.dropout(flat)), self.fc(self.dropout(flat))
