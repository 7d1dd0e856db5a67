"""Rebuild a RecordIO ``.idx`` index by reading the ``.rec`` from start to end.

    python -m tools.rec2idx data/faces_emore/train.rec            # writes train.idx beside it
    python -m tools.rec2idx train.rec out.idx --key sequential --force

Keys are each record's ``IRHeader.id`` by default (as insightface's rec2idx; for files written
by ``tools.im2rec`` or insightface this is the original key). ``--key sequential`` numbers the
records 0..N-1 in file order instead (as mxnet's ``tools/rec2idx.py``), for files whose ids are
not unique.
"""

from __future__ import annotations

import argparse
import logging
import os

from tqdm import tqdm

from utils.cli import run_cli
from utils.fileio import atomic_path, refuse_overwrite
from utils.recordio import MXRecordIO, RecordIOError, unpack

KEY_MODES = ("id", "sequential")


def scan_offsets(
    rec_path: str | os.PathLike, key: str = "id", progress: bool = True
) -> list[tuple[int, int]]:
    """``(key, byte offset)`` of every record of ``rec_path``, in file order."""
    if key not in KEY_MODES:
        raise ValueError(f"key={key!r}: expected one of {', '.join(KEY_MODES)}")
    rec_path = os.fspath(rec_path)
    entries: list[tuple[int, int]] = []
    first_seen: dict[int, int] = {}
    size = os.path.getsize(rec_path)
    with MXRecordIO(rec_path, "r") as reader, tqdm(
        total=size, unit="B", unit_scale=True, desc="rec2idx", disable=not progress
    ) as bar:
        while True:
            # mxnet's reader has no public tell(); _pos is where the next record starts
            pos = reader._pos  # noqa: SLF001
            payload = reader.read()
            if payload is None:
                break
            bar.update(reader._pos - pos)  # noqa: SLF001
            if key == "sequential":
                entries.append((len(entries), pos))
                continue
            try:
                rid = int(unpack(payload)[0].id)
            except RecordIOError as e:
                raise RecordIOError(
                    f"{rec_path}: record at byte {pos} has no image header ({e}); "
                    f"use --key sequential"
                ) from None
            if rid in first_seen:
                raise RecordIOError(
                    f"{rec_path}: records at bytes {first_seen[rid]} and {pos} both have id {rid}; "
                    f"use --key sequential to number the records 0..N-1"
                )
            first_seen[rid] = pos
            entries.append((rid, pos))
    return entries


def write_index(entries: list[tuple[int, int]], idx_path: str | os.PathLike) -> None:
    """Write ``key<TAB>offset`` lines atomically (a crash never leaves half an index)."""
    with atomic_path(idx_path) as tmp:
        with open(tmp, "w") as f:
            f.writelines(f"{k}\t{pos}\n" for k, pos in entries)


def rebuild_index(
    rec_path: str | os.PathLike,
    idx_path: str | os.PathLike | None = None,
    key: str = "id",
    force: bool = False,
    progress: bool = True,
) -> str:
    """Scan ``rec_path`` and write its index (default: same name, .idx); return the index path."""
    rec_path = os.fspath(rec_path)
    idx_path = os.fspath(idx_path) if idx_path else os.path.splitext(rec_path)[0] + ".idx"
    if not os.path.isfile(rec_path):
        raise FileNotFoundError(f"{rec_path}: RecordIO file not found")
    refuse_overwrite([idx_path], force)
    entries = scan_offsets(rec_path, key, progress)
    write_index(entries, idx_path)
    logging.getLogger(__name__).info("%s: %d records indexed", idx_path, len(entries))
    return idx_path


def main(argv: list[str] | None = None) -> int:
    """Command line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m tools.rec2idx",
        description="Rebuild the .idx index of a RecordIO .rec file by reading it sequentially.",
    )
    parser.add_argument("rec", help="the .rec file")
    parser.add_argument("idx", nargs="?", help="the .idx to write (default: the .rec path with .idx)")
    parser.add_argument(
        "--key", choices=KEY_MODES, default="id",
        help="index key: each record's IRHeader.id (default, as insightface) or 0..N-1 in file order",
    )
    parser.add_argument("--force", action="store_true", help="overwrite an existing .idx")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    idx = rebuild_index(args.rec, args.idx, args.key, args.force, progress=not args.quiet)
    print(f"wrote {idx}")
    return 0


if __name__ == "__main__":
    run_cli(main, extra=(ValueError,))  # every ValueError here is about the input file
