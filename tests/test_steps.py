"""eval/steps.py (run-folder cache, best step, table) and utils.checkpoint.list_step_weights."""

from __future__ import annotations

import json
import os

import pytest

from eval.steps import ResultCache, best_steps, evaluate_steps, file_stamp, format_steps, report_steps, settings_key
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


def test_file_stamp_nanoseconds():
    import tempfile

    with tempfile.NamedTemporaryFile() as f:
        f.write(b"12345")
        f.flush()
        os.utime(f.name, ns=(7, 1_000_000_007))  # a change within the same second still counts
        assert file_stamp(f.name) == {"size": 5, "mtime_ns": 1_000_000_007}


def test_evaluate_steps_per_part_cache_and_skipped_files(tmp_path, capsys):
    steps = []
    for step in (1, 2, 3):
        path = tmp_path / f"backbone-{step}.pth"
        path.write_bytes(b"x" * step)
        steps.append((step, str(path)))
    calls = []

    def evaluate(path, parts):
        calls.append((os.path.basename(path), list(parts)))
        if path.endswith("-3.pth"):
            raise ValueError("not a backbone")
        step = int(path[-5])
        return {part: {"acc": step / 10 + len(part) / 100} for part in parts}

    cache = ResultCache(tmp_path / "cache.json")
    two = {"lfw": settings_key({"t": "lfw"}), "cfp": settings_key({"t": "cfp"})}
    rows = evaluate_steps(steps, cache, two, evaluate, skip=(ValueError,))
    assert calls == [("backbone-1.pth", ["lfw", "cfp"]), ("backbone-2.pth", ["lfw", "cfp"]),
                     ("backbone-3.pth", ["lfw", "cfp"])]
    assert rows[0]["scores"] == {"lfw": {"acc": 0.13}, "cfp": {"acc": 0.13}}
    assert rows[2]["error"] == "not a backbone" and "scores" not in rows[2]
    # a new part: only that part is evaluated; the failed file again (nothing was cached for it)
    calls.clear()
    three = {**two, "agedb": settings_key({"t": "agedb"})}
    rows = evaluate_steps(steps, ResultCache(tmp_path / "cache.json"), three, evaluate, skip=(ValueError,))
    assert calls == [("backbone-1.pth", ["agedb"]), ("backbone-2.pth", ["agedb"]),
                     ("backbone-3.pth", ["lfw", "cfp", "agedb"])]
    assert list(rows[1]["scores"]) == ["lfw", "cfp", "agedb"] and rows[1]["scores"]["agedb"] == {"acc": 0.25}
    with pytest.raises(ValueError, match="not a backbone"):  # not skipped: an error
        evaluate_steps(steps, cache, three, evaluate)
    # the report of rows with an error row first, printed only (no file)
    table_rows = [{"step": r["step"], "name": r["name"], "scores": {k: v["acc"] for k, v in r["scores"].items()}}
                  for r in rows if "scores" in r]
    summary = report_steps("title", [rows[2], *table_rows], None, metrics=["lfw", "agedb"])
    assert summary["best"]["agedb"]["step"] == 2 and summary["metrics"] == ["lfw", "agedb"]
    assert "title" in capsys.readouterr().out and not (tmp_path / "None").exists()

