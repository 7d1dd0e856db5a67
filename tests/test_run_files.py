"""utils/run_files.py: the run folder's file names, written by the trainer and read by the evaluators."""

from utils import run_files


def test_step_from_filename():
    assert run_files.step_from_filename("/a/24000model.pth") == 24000
    assert run_files.step_from_filename("checkpoint-120.pt") == 120
    assert run_files.step_from_filename("backbone.pth") is None


def test_checkpoints_and_backbones_are_listed_in_step_order(tmp_path):
    for step in (20, 3, 100):
        open(run_files.checkpoint_path(str(tmp_path), step), "w").close()
        open(run_files.backbone_path(str(tmp_path), step), "w").close()
    open(tmp_path / run_files.BACKBONE, "w").close()
    open(tmp_path / "checkpoint-7.pt.tmp", "w").close()  # an interrupted save is not a checkpoint
    assert [s for s, _ in run_files.list_checkpoints(str(tmp_path))] == [3, 20, 100]
    assert [s for s, _ in run_files.list_backbones(str(tmp_path))] == [3, 20, 100]
    assert run_files.list_checkpoints(str(tmp_path / "missing")) == []


def test_step_weights_prefer_the_small_backbone_snapshot(tmp_path):
    for name in ("checkpoint-6.pt", "backbone-6.pth", "12model.pth", "18backbone.pth", "notes.txt"):
        open(tmp_path / name, "w").close()
    found = run_files.list_step_weights(tmp_path)
    assert [(s, p.rsplit("/", 1)[1]) for s, p in found] == [
        (6, "backbone-6.pth"), (12, "12model.pth"), (18, "18backbone.pth")
    ]
    assert run_files.is_step_weights("x/checkpoint-6.pt") and not run_files.is_step_weights("backbone.pth")
