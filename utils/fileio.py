"""Small file helpers shared by the tools: refuse to overwrite, write atomically."""

from __future__ import annotations

import contextlib
import os
import tempfile
from typing import Iterable, Iterator


def refuse_overwrite(paths: Iterable[str | os.PathLike], force: bool = False) -> None:
    """Raise ``FileExistsError`` naming every existing path, unless ``force`` is set."""
    existing = [os.fspath(p) for p in paths if os.path.exists(p)]
    if existing and not force:
        raise FileExistsError(
            f"refusing to overwrite {', '.join(existing)}; pass --force to replace "
            f"{'it' if len(existing) == 1 else 'them'}"
        )


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[str]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` in one rename.

    A crash (or SIGKILL) while writing leaves the old file untouched and at most a stray
    ``.tmp`` file, never a half-written ``path``.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
