"""bench/peak_memory.py: runs a script or a module as __main__ and reports the peak GPU memory after it."""

from __future__ import annotations

import subprocess
import sys

from tests.runs import ROOT


def test_runs_a_script_with_its_arguments_and_reports_after_it(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text("import sys\nprint('args', sys.argv[1:], __name__)\nsys.exit(3)\n")
    done = subprocess.run([sys.executable, "bench/peak_memory.py", str(script), "a", "--b"], cwd=ROOT,
                          capture_output=True, text=True)
    assert done.returncode == 3  # the script's own exit status
    lines = done.stdout.splitlines()
    assert lines[0] == "args ['a', '--b'] __main__"
    assert lines[-1].startswith("peak GPU memory: ")


def test_runs_a_module_of_the_repository_like_python_m(tmp_path):
    done = subprocess.run([sys.executable, "bench/peak_memory.py", "-m", "bench.check_training", "--help"],
                          cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "usage:" in done.stdout and done.stdout.splitlines()[-1].startswith("peak GPU memory: ")


def test_without_a_script_is_a_usage_error_through_run_cli():
    done = subprocess.run([sys.executable, "bench/peak_memory.py", "-m"], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 2
    usage = "usage: python bench/peak_memory.py (script.py | -m module) [args...]"
    assert done.stderr.strip() == f"error: UsageError: {usage}"
