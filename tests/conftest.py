"""Fixtures shared by several test files."""

from __future__ import annotations

import pytest

from runs import make_tiny_synthetic
from utils.cli import run_cli


@pytest.fixture
def user_error(capsys):
    """Run a CLI main through utils.cli.run_cli; assert exit status 2 and return its error line."""

    def run(main, argv, extra=()) -> str:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exc:
            run_cli(main, [str(a) for a in argv], extra)
        err = capsys.readouterr().err
        assert exc.value.code == 2, err
        assert "Traceback" not in err
        line = err.strip().splitlines()[-1]
        assert line.startswith("error: "), err
        return line

    return run


@pytest.fixture
def one_torch_thread():
    """Tiny models run faster on one thread, and do not stall when the CPU is oversubscribed."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """The tiny synthetic training set of the end-to-end training tests (made once; read only)."""
    return make_tiny_synthetic(tmp_path_factory.mktemp("synthetic"))
