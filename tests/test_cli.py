"""utils/cli.py and the error style of every command-line entry point: one line, exit 2."""

from __future__ import annotations

import ast
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

from utils.cli import error_line, run_cli, user_error_types
from utils.config import ConfigError

REPO = Path(__file__).resolve().parents[1]
NOT_SOURCE = {".git", ".venv", "tests", "data", "work_dirs"}


def entry_points() -> list[str]:
    """Every project file with an ``if __name__ == "__main__":`` block: the tools, evaluators, benchmarks."""
    found = []
    for folder, subfolders, files in os.walk(REPO):
        subfolders[:] = [d for d in subfolders if d not in NOT_SOURCE and not d.startswith(".")]
        found += [os.path.join(folder, f) for f in files if f.endswith(".py")]
    return sorted(str(Path(p).relative_to(REPO)) for p in found if main_block(Path(p)) is not None)


def main_block(path: Path) -> ast.If | None:
    """The file's top-level ``if __name__ == "__main__":`` block, if any."""
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.If) and "__main__" in ast.unparse(node.test):
            return node
    return None


ENTRY_POINTS = entry_points()


# -- the helper --------------------------------------------------------------------------------


def test_error_line_is_one_line_with_the_type():
    assert error_line(FileNotFoundError("x.rec: not found")) == "error: FileNotFoundError: x.rec: not found"
    assert error_line(ConfigError("a\n  b\n\n c")) == "error: ConfigError: a | b | c"
    assert error_line(FileExistsError()) == "error: FileExistsError: FileExistsError()"


def test_run_cli_exit_codes(capsys):
    def main(argv):
        kind = argv[0]
        if kind == "config":
            raise ConfigError("unknown key 'lr_stpes'; did you mean 'lr_steps'?")
        if kind == "bug":
            raise RuntimeError("a bug keeps its traceback")
        if kind == "value":
            raise ValueError("plain ValueError")
        return {"dict": 0, "three": 3}.get(kind, {"a": 1})

    for argv, code in ((["dict"], 0), (["three"], 3), (["other"], 0)):
        with pytest.raises(SystemExit) as exc:
            run_cli(main, argv)
        assert exc.value.code == code
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["config"])
    assert exc.value.code == 2
    assert capsys.readouterr().err == "error: ConfigError: unknown key 'lr_stpes'; did you mean 'lr_steps'?\n"
    with pytest.raises(RuntimeError, match="a bug"):
        run_cli(main, ["bug"])
    with pytest.raises(ValueError, match="plain"):  # not ours: a bug unless the tool says otherwise
        run_cli(main, ["value"])
    with pytest.raises(SystemExit) as exc:
        run_cli(main, ["value"], extra=(ValueError,))
    assert exc.value.code == 2 and capsys.readouterr().err == "error: ValueError: plain ValueError\n"


def test_run_cli_traceback_switch_and_log_file(tmp_path, monkeypatch, capsys):
    def main():
        raise FileNotFoundError("data/train.rec not found")

    root = logging.getLogger()
    handler = logging.FileHandler(tmp_path / "training.log")
    root.addHandler(handler)
    try:
        with pytest.raises(SystemExit):
            run_cli(main)
    finally:
        root.removeHandler(handler)
        handler.close()
    assert (tmp_path / "training.log").read_text() == "error: FileNotFoundError: data/train.rec not found\n"
    monkeypatch.setenv("CONTRAFACE_TRACEBACK", "1")
    with pytest.raises(FileNotFoundError):
        run_cli(main)


def test_user_error_types_are_the_projects():
    from eval.verification import BinFileError
    from utils.checkpoint import CheckpointError, UnsafeCheckpointError
    from utils.dataset import DatasetError
    from utils.recordio import RecordIOError, RecordKeyError

    types = user_error_types()
    for cls in (BinFileError, CheckpointError, UnsafeCheckpointError, DatasetError, RecordIOError,
                RecordKeyError, ConfigError, FileNotFoundError, FileExistsError):
        assert issubclass(cls, types), cls
    assert not issubclass(ValueError, types) and not issubclass(RuntimeError, types)


def main_block_calls(path: Path) -> list[str]:
    """The functions called in the file's ``if __name__ == "__main__":`` block."""
    return [ast.unparse(c.func) for c in ast.walk(main_block(path)) if isinstance(c, ast.Call)]


def test_entry_points_are_found():
    assert {"train.py", "train_unimoco.py", "eval/ijb/ijb_eval.py", "tools/plot_log.py", "bench/compare_heads.py"} \
        <= set(ENTRY_POINTS)


@pytest.mark.parametrize("path", ENTRY_POINTS)
def test_every_entry_point_runs_through_run_cli(path):
    assert "run_cli" in main_block_calls(REPO / path), f"{path}: __main__ does not call run_cli"


# -- one user error per entry point ------------------------------------------------------------


def test_data_tools(tmp_path, user_error):
    from tools import im2rec, make_bin, rec2idx, shuffle_rec

    missing = tmp_path / "nope"
    line = user_error(im2rec.main, [missing, tmp_path / "out"], extra=(ValueError,))
    assert line == f"error: FileNotFoundError: {missing}: no such image folder or .lst file"
    line = user_error(rec2idx.main, [tmp_path / "x.rec", "--quiet"], extra=(ValueError,))
    assert line.startswith("error: FileNotFoundError") and "x.rec" in line
    line = user_error(shuffle_rec.main, [missing, tmp_path / "out", "--quiet"], extra=(ValueError,))
    assert line.startswith("error: FileNotFoundError") and str(missing) in line
    line = user_error(make_bin.main, ["--pairs", tmp_path / "pairs.txt", "--output", tmp_path / "a.bin"],
                      extra=(ValueError,))
    assert line.startswith("error: FileNotFoundError") and "pairs.txt" in line


def test_synthetic_tools_refuse_existing_output(tmp_path, user_error):
    from tools import make_synthetic, make_synthetic_ijb, make_synthetic_megaface

    (tmp_path / "property").write_text("x")
    line = user_error(make_synthetic.main, ["--output", tmp_path], extra=(ValueError,))
    assert line.startswith("error: FileExistsError: refusing to overwrite") and "property" in line
    line = user_error(make_synthetic.main, ["--output", tmp_path / "new", "--quality", "0"], extra=(ValueError,))
    assert line == "error: ValueError: --quality must be in 1..100, got 0"
    (tmp_path / "IJBC").mkdir()
    line = user_error(make_synthetic_ijb.main, ["--output", tmp_path, "--targets", "IJBC"])
    assert line.startswith("error: FileExistsError") and str(tmp_path / "IJBC") in line
    (tmp_path / "facescrub_images").mkdir()
    line = user_error(make_synthetic_megaface.main, ["--output", tmp_path])
    assert line.startswith("error: FileExistsError") and "facescrub_images" in line


def test_model_tools(tmp_path, user_error, capsys):
    from backbones import complexity
    from tools import draw_framework, export_onnx

    line = user_error(export_onnx.main, ["--weights", tmp_path / "w.pth", "--output", tmp_path / "w.onnx"])
    assert line == f"error: FileNotFoundError: checkpoint {tmp_path / 'w.pth'} not found"
    with pytest.raises(SystemExit) as exc:  # parser.error: argparse's own line, also exit 2
        run_cli(complexity.main, ["iresnet7"])
    assert exc.value.code == 2 and "error: unknown backbone 'iresnet7'" in capsys.readouterr().err.splitlines()[-1]
    line = user_error(draw_framework.main, ["--output", tmp_path / "no" / "such" / "f.png"])
    assert line.startswith("error: FileNotFoundError") and "f.png" in line


def test_evaluators(tmp_path, user_error):
    from eval import evaluation
    from eval.ijb import ijb_eval
    from eval.megaface import megaface_eval, noises

    weights = tmp_path / "w.pth"
    line = user_error(evaluation.main, ["--weights", weights, "--data-dir", tmp_path])
    assert line == f"error: FileNotFoundError: --weights {weights}: no such file or folder"
    weights.write_bytes(b"not a checkpoint")
    line = user_error(evaluation.main, ["--weights", weights, "--data-dir", tmp_path, "--batch-size", "0"])
    assert line == "error: UsageError: --batch-size must be >= 1, got 0"
    line = user_error(ijb_eval.main, ["--weights", tmp_path / "x.pt", "--data-root", tmp_path, "--output", tmp_path])
    assert line.startswith("error: FileNotFoundError") and "x.pt" in line
    line = user_error(megaface_eval.main, ["--weights", weights, "--facescrub-root", tmp_path / "fs",
                                           "--megaface-root", tmp_path, "--output", tmp_path / "out"])
    assert line == f"error: MegaFaceError: --facescrub-root {tmp_path / 'fs'}: folder not found"
    (tmp_path / "clean").mkdir()
    line = user_error(noises.main, ["--feature-dir-input", tmp_path, "--feature-dir-out", tmp_path / "clean",
                                    "--algo", "a", "--templatelists", tmp_path, "--facescrub-noises", "x",
                                    "--megaface-noises", "y"])
    assert line.startswith("error: FileExistsError") and "clean" in line


@pytest.mark.parametrize("command, expected", [
    (["-m", "tools.rec2idx", "missing.rec"], "error: FileNotFoundError: missing.rec: RecordIO file not found"),
    (["-m", "eval.evaluation", "--weights", "missing.pth", "--data-dir", "."],
     "error: FileNotFoundError: --weights missing.pth: no such file or folder"),
    ([str(REPO / "train.py"), "--set", "lr_stpes=1"], "error: ConfigError: unknown key 'lr_stpes'"),
])
def test_command_line_prints_one_line_and_exits_2(tmp_path, command, expected):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, *command], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(expected), out.stderr
