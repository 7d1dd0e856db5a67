"""eval/steps.py (run-folder cache, best step, table) and utils.checkpoint.list_step_weights."""

from __future__ import annotations

import json
import os

import pytest

from eval.steps import ResultCache, best_steps, format_steps, settings_key
from utils.run_files import is_step_weights, list_step_weights, require_step_weights


def test_list_step_weights_one_file_per_step(tmp_path):
    names = ["backbone-10.pth", "checkpoint-10.pt", "checkpoint-20.pt", "5model.pth", "5header.pth",
             "backbone.pth", "30backbone.pth", "notes.txt", "checkpoint-7.pt.tmp"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "backbone-40.pth").mkdir()  # not a file
    found = [(step, os.path.basename(p)) for step, p in list_step_weights(tmp_path)]
    assert found == [(5, "5model.pth"), (10, "backbone-10.pth"), (20, "checkpoint-20.pt"), (30, "30backbone.pth")]
    assert is_step_weights("run/backbone-3.pth") and not is_step_weights("5header.pth")
    assert list_step_weights(tmp_path / "backbone-40.pth") == []


def test_require_step_weights_names_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match=f"--weights {tmp_path}: no per-step weight files"):
        require_step_weights(tmp_path)
    (tmp_path / "backbone-6.pth").write_bytes(b"")
    assert require_step_weights(tmp_path) == [(6, str(tmp_path / "backbone-6.pth"))]


def test_best_steps_per_metric_and_mean():
    rows = [
        {"step": 1, "name": "a", "scores": {"lfw": 0.90, "cfp": 0.80}},  # mean 0.85
        {"step": 2, "name": "b", "scores": {"lfw": 0.95, "cfp": 0.70}},  # mean 0.825
        {"step": 3, "name": "c", "scores": {"lfw": 0.95, "cfp": 0.78}},  # lfw ties with 2: 2 wins; mean 0.865
        {"step": 4, "name": "d", "scores": {"lfw": 0.99}},  # no cfp: no mean
    ]
    best = best_steps(rows, ["lfw", "cfp"])
    assert best["lfw"] == {"step": 4, "name": "d", "value": 0.99}
    assert best["cfp"] == {"step": 1, "name": "a", "value": 0.80}
    assert best["mean"]["step"] == 3 and abs(best["mean"]["value"] - 0.865) < 1e-12
    best = best_steps(rows[:3], ["lfw"])
    assert best["lfw"]["step"] == 2  # the earlier of two equal steps
    lines = format_steps(rows, ["lfw", "cfp"]).splitlines()
    assert lines[0].split() == ["step", "file", "lfw", "cfp", "mean"]
    assert lines[2].split() == ["1", "a", "90.00", "80.00", "85.00"]
    assert lines[5].split() == ["4", "d", "99.00", "-", "-"]
    assert lines[-1].split() == ["best", "99.00", "@4", "80.00", "@1", "86.50", "@3"]


def test_result_cache_keyed_by_file_stamp_and_settings(tmp_path):
    weights = tmp_path / "backbone-1.pth"
    weights.write_bytes(b"1234")
    path = tmp_path / "cache.json"
    key = settings_key({"target": "lfw", "nfolds": 10})
    assert key == settings_key({"nfolds": 10, "target": "lfw"}) != settings_key({"target": "lfw", "nfolds": 5})
    cache = ResultCache(path)
    assert cache.get(str(weights), key) is None
    cache.put(str(weights), key, {"acc": 0.5})
    again = ResultCache(path)  # written at once
    assert again.get(str(weights), key) == {"acc": 0.5} and again.get(str(weights), "other") is None
    os.utime(weights, ns=(5, 5))  # the file changed: the entry no longer counts
    assert again.get(str(weights), key) is None
    path.write_text("{broken")
    assert ResultCache(path).entries == {}  # a broken cache is started afresh, not an error
    assert json.loads(json.dumps(again.entries))  # plain JSON
