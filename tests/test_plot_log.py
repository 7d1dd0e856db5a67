"""tools/plot_log.py: the three log dialects parsed to numbers, and the figure."""

from __future__ import annotations

import pytest

from tools import plot_log

OURS = """\
[2026-11-22 12:09:26]-1 process(es) on cpu; 12000 images, 300 classes; 187 steps/epoch, 748 steps in all
[2026-11-22 12:09:46]-[50][E 0][ 159/s] -Loss 33.0239 -L1 29.4403 -margin 0.0000 -LR 0.100000 -ETA: 0.08 H
[2026-11-22 12:10:46]-[187][lfw]XNorm: 22.388014
[2026-11-22 12:10:46]-[187][lfw]Accuracy-Flip: 0.82000+-0.03122
[2026-11-22 12:10:46]-[187][lfw]Accuracy-Highest: 0.82000
[2026-11-22 12:10:46]-[187][cfp_fp]Accuracy-Flip: 0.70000+-0.03122
[2026-11-22 12:10:46]-[187][mean]Accuracy-Flip: 0.76000
[2026-11-22 12:10:46]-[187][mean]Accuracy-Highest: 0.76000
[2026-11-22 12:13:47]-[600][E 3][ 116/s] -Loss 23.6299 -L1 23.5539 -L2 23.6320 -LC 2.9694 -margin 0.3329 -LR 0.010000 -ETA: 0.02 H
"""

ORIGINAL = """\
[2022-07-22 17:36:05]-step per epoch:11372
[2022-07-22 17:37:42]-[91050][E 8][1058/s] -Loss 3.48 -Loss1 3.00 -Loss2 3.02 -LossC 1.26 -Time: 40.0 H
[2022-07-23 17:56:16]-[265550][E23][ 816/s] -Loss 1.05 -Loss1 1.14 -Loss2 1.14 -LossC 1.31 -Time: 4.2 H
[2022-07-23 19:14:16]-[272928][2][agedb_30]XNorm: 22.572608
[2022-07-23 19:14:16]-[272928][2][agedb_30]Accuracy-Flip: 0.98283+-0.00879
[2022-07-23 19:14:16]-[272928][2][agedb_30]Accuracy-Highest: 0.98367
[2022-07-23 19:14:16]-[272928][0][lfw]Accuracy-Flip: 0.99833+-0.00236
"""

INSIGHTFACE = """\
Training: 2021-06-01 10:00:00,000-rank_id: 0
Training: 2021-06-01 10:01:00,000-Speed 1834.21 samples/sec   Loss 44.5678   LearningRate 0.100000   Epoch: 0   Global Step: 100   Fp16 Grad Scale: 65536   Required: 30 hours
Training: 2021-06-01 10:02:00,000-Speed 1840.50 samples/sec   Loss 40.1234   Epoch: 0   Global Step: 200   Required: 29 hours
Training: 2021-06-01 10:03:00,000-[lfw][2000]XNorm: 21.123456
Training: 2021-06-01 10:03:00,000-[lfw][2000]Accuracy-Flip: 0.99500+-0.00300
Training: 2021-06-01 10:03:00,000-[lfw][2000]Accuracy-Highest: 0.99500
Training: 2021-06-01 10:03:00,000-[cfp_fp][2000]Accuracy-Flip: 0.95000+-0.00800
"""


def test_this_projects_log():
    run = plot_log.parse_log(OURS.splitlines(), "ours")
    assert run.series(run.train, "Loss") == ([50, 600], [33.0239, 23.6299])
    assert run.series(run.train, "L2") == ([600], [23.6320])
    assert run.series(run.train, "margin") == ([50, 600], [0.0, 0.3329])
    assert run.series(run.train, "LR") == ([50, 600], [0.1, 0.01])
    assert run.series(run.train, "speed") == ([50, 600], [159.0, 116.0])
    assert run.series(run.train, "epoch") == ([50, 600], [0.0, 3.0])
    assert "ETA" not in run.train and set(run.accuracy) == {"lfw", "cfp_fp", "mean"}
    assert run.accuracy["lfw"] == {187: 0.82} and run.accuracy["mean"] == {187: 0.76}  # the logged mean
    assert run.highest["lfw"] == {187: 0.82}


def test_original_contraface_log():
    run = plot_log.parse_log(ORIGINAL.splitlines(), "orig")
    assert run.series(run.train, "Loss") == ([91050, 265550], [3.48, 1.05])
    assert run.series(run.train, "L1") == ([91050, 265550], [3.00, 1.14])  # Loss1 -> L1
    assert run.series(run.train, "LC") == ([91050, 265550], [1.26, 1.31])
    assert run.series(run.train, "epoch")[1] == [8.0, 23.0] and run.series(run.train, "speed")[1] == [1058.0, 816.0]
    assert "Time" not in run.train and "LR" not in run.train
    assert run.accuracy["agedb_30"] == {272928: 0.98283} and run.highest["agedb_30"] == {272928: 0.98367}
    assert run.accuracy["mean"] == {272928: pytest.approx((0.98283 + 0.99833) / 2)}  # computed: not logged


def test_insightface_log():
    run = plot_log.parse_log(INSIGHTFACE.splitlines(), "insightface")
    assert run.series(run.train, "Loss") == ([100, 200], [44.5678, 40.1234])
    assert run.series(run.train, "speed") == ([100, 200], [1834.21, 1840.50])
    assert run.series(run.train, "LR") == ([100], [0.1])  # the older format has no LearningRate
    assert run.accuracy["lfw"] == {2000: 0.995} and run.accuracy["cfp_fp"] == {2000: 0.95}
    assert run.accuracy["mean"] == {2000: pytest.approx(0.9725)}


def test_a_repeated_step_keeps_the_last_value():
    lines = ["[100][E 0][ 10/s] -Loss 5.0 -LR 0.1 -ETA: 1.00 H", "[100][E 0][ 12/s] -Loss 4.0 -LR 0.1 -ETA: 1.00 H"]
    run = plot_log.parse_log(lines)
    assert run.series(run.train, "Loss") == ([100], [4.0]) and run.series(run.train, "speed") == ([100], [12.0])


def test_cli_overlays_runs_into_a_png(tmp_path, user_error):
    run_dir = tmp_path / "my-run"
    run_dir.mkdir()
    (run_dir / "training.log").write_text(OURS)
    (tmp_path / "ContraFace.log").write_text(ORIGINAL)
    (tmp_path / "insightface.log").write_text(INSIGHTFACE)
    out = tmp_path / "curves.png"
    logs = [run_dir / "training.log", tmp_path / "ContraFace.log", tmp_path / "insightface.log"]
    panels = plot_log.main([*map(str, logs), "--output", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert panels == ["loss", "ContraFace margin", "learning rate", "speed (images/s)", "lfw accuracy (flip)",
                      "cfp_fp accuracy (flip)", "agedb_30 accuracy (flip)", "mean accuracy (flip)"]
    assert [plot_log.default_label(str(p)) for p in logs] == ["my-run", "ContraFace", "insightface"]
    line = user_error(plot_log.main, [*logs, "--output", out])
    assert line.startswith("error: FileExistsError: refusing to overwrite") and "curves.png" in line
    (tmp_path / "empty.log").write_text("nothing here\n")
    line = user_error(plot_log.main, [tmp_path / "empty.log", "--output", tmp_path / "x.png"])
    assert line.startswith(f"error: LogFormatError: {tmp_path / 'empty.log'}: no training or verification line")
    line = user_error(plot_log.main, [*logs, "--output", tmp_path / "y.png", "--labels", "a,b"])
    assert line == "error: UsageError: --labels has 2 labels for 3 logs"
