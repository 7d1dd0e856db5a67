"""bench/check_training.py: a short run learned when its loss fell and its accuracy rose."""

from __future__ import annotations

import subprocess
import sys

import pytest

from bench.check_training import verdict
from tests.runs import ROOT
from utils.errors import UsageError

LINES = {  # the quickstart's training.log
    "loss_1": "[2026-12-07 12:17:35]-[50][E 0][ 143/s] -Loss 32.9294 -L1 32.9294 -margin 0.0000 -LR 0.100000",
    "acc_1": "[2026-12-07 12:18:42]-[187][lfw]Accuracy-Flip: 0.79583+-0.04398",
    "loss_2": "[2026-12-07 12:19:09]-[250][E 1][ 163/s] -Loss 26.7831 -L1 26.7831 -margin 0.0000 -LR 0.100000",
    "acc_2": "[2026-12-07 12:20:03]-[374][lfw]Accuracy-Flip: 0.86083+-0.02501",
}


def write_log(path, *names):
    path.write_text("\n".join(LINES[n] for n in names) + "\n")
    return str(path)


def test_a_run_whose_loss_falls_and_accuracy_rises_learned(tmp_path):
    learned, line = verdict(write_log(tmp_path / "training.log", "loss_1", "acc_1", "loss_2", "acc_2"))
    assert learned
    assert "Loss 32.9294 (step 50) -> 26.7831 (step 250) falls" in line and "79.58% (step 187) -> 86.08%" in line


def test_a_falling_accuracy_is_not_learning_and_require_fails_the_command(tmp_path):
    # the accuracy lines swapped: lfw 86.08% at step 187, 79.58% at step 374
    text = LINES["loss_1"] + "\n" + LINES["acc_2"].replace("[374]", "[187]") + "\n" + LINES["loss_2"] + "\n" \
        + LINES["acc_1"].replace("[187]", "[374]") + "\n"
    (tmp_path / "training.log").write_text(text)
    learned, line = verdict(str(tmp_path / "training.log"))
    assert not learned and "DOES NOT RISE" in line
    script = [sys.executable, "bench/check_training.py", str(tmp_path / "training.log")]
    assert subprocess.run(script, cwd=ROOT, capture_output=True).returncode == 0  # reports only
    done = subprocess.run([*script, "--require"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stdout.startswith("did not learn: ")


def test_a_log_with_one_score_is_a_usage_error_naming_the_file(tmp_path):
    path = write_log(tmp_path / "training.log", "loss_1", "acc_1", "loss_2")
    with pytest.raises(UsageError, match=r"training.log: needs two logged losses and two lfw scores, has 2 and 1"):
        verdict(path)
