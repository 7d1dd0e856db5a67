"""Build a verification .bin (insightface format) from a pairs list and a folder of aligned faces.

    python -m tools.make_bin --pairs lfw/pairs.txt --root lfw/aligned --output lfw.bin
    python -m tools.make_bin --pairs my_pairs.txt --root faces/ --output my.bin --resize

Pairs lists:
  lfw   LFW's pairs.txt: a header "10<TAB>300" (folds, pairs per kind per fold; or one number N for
        N same + N different pairs), then "name n1 n2" (same) / "name1 n1 name2 n2" (different)
        lines; images are ROOT/name/name_0001.jpg (--ext to change the extension).
  list  one pair per line: "path1 path2 issame" with issame 0 or 1; relative paths are under ROOT.
Pair order is kept: the 10-fold protocol splits the pairs in file order (LFW's official folds).

Images must already be aligned to the output size (112x112). JPEG/PNG files of the right size
are stored byte for byte; other formats are re-encoded as JPEG (quality 95), and so are wrong-size
images when --resize is given (otherwise they are an error naming the file).
"""

from __future__ import annotations

import argparse
import logging
import os
import pickle
import struct
from typing import BinaryIO, Sequence

from tqdm import tqdm

from utils.cli import run_cli
from utils.errors import UserError
from utils.fileio import atomic_path, refuse_overwrite
from utils.images import encode_face

logger = logging.getLogger(__name__)


class PairsFormatError(UserError, ValueError):
    """A pairs list that cannot be parsed; the message names the file and line."""


# --------------------------------------------------------------------------------------------------
# Pairs lists
# --------------------------------------------------------------------------------------------------

def _lines(path: str) -> list[tuple[int, list[str]]]:
    with open(path, encoding="utf-8") as f:
        return [(no, line.split()) for no, line in enumerate(f, start=1) if line.strip()]


def _is_int(token: str) -> bool:
    return token.lstrip("+").isdigit()


def detect_format(path: str) -> str:
    """'lfw' when the first line is LFW's numeric header, else 'list'."""
    lines = _lines(path)
    if lines and 1 <= len(lines[0][1]) <= 2 and all(_is_int(t) for t in lines[0][1]):
        return "lfw"
    return "list"


def read_lfw_pairs(path: str, root: str, ext: str = "jpg") -> list[tuple[str, str, bool]]:
    """Parse LFW's pairs.txt into (image path 1, image path 2, issame), in file order."""
    lines = _lines(path)
    if not lines or not (1 <= len(lines[0][1]) <= 2 and all(_is_int(t) for t in lines[0][1])):
        raise PairsFormatError(f"{path}:1: expected LFW's header ('10<TAB>300' or a pair count)")
    header = [int(t) for t in lines[0][1]]
    expected = 2 * header[0] * (header[1] if len(header) == 2 else 1)

    def image(name: str, number: str, no: int) -> str:
        if not _is_int(number):
            raise PairsFormatError(f"{path}:{no}: image number {number!r} is not an integer")
        return os.path.join(root, name, f"{name}_{int(number):04d}.{ext}")

    pairs = []
    for no, tokens in lines[1:]:
        if len(tokens) == 3:
            pairs.append((image(tokens[0], tokens[1], no), image(tokens[0], tokens[2], no), True))
        elif len(tokens) == 4:
            pairs.append((image(tokens[0], tokens[1], no), image(tokens[2], tokens[3], no), False))
        else:
            raise PairsFormatError(f"{path}:{no}: expected 'name n1 n2' or 'name1 n1 name2 n2', "
                                   f"got {len(tokens)} fields")
    if len(pairs) != expected:
        raise PairsFormatError(f"{path}: header {' '.join(map(str, header))} announces {expected} "
                               f"pairs, the file has {len(pairs)}")
    return pairs


def read_list_pairs(path: str, root: str) -> list[tuple[str, str, bool]]:
    """Parse 'path1 path2 issame(0/1)' lines; relative paths are taken under ``root``."""
    pairs = []
    for no, tokens in _lines(path):
        if len(tokens) != 3 or tokens[2] not in ("0", "1"):
            raise PairsFormatError(f"{path}:{no}: expected 'path1 path2 issame' with issame 0 or "
                                   f"1, got {' '.join(tokens)!r}")
        pairs.append((os.path.join(root, tokens[0]), os.path.join(root, tokens[1]),
                      tokens[2] == "1"))
    if not pairs:
        raise PairsFormatError(f"{path}: no pairs")
    return pairs


# --------------------------------------------------------------------------------------------------
# Images
# --------------------------------------------------------------------------------------------------

def encode_image(path: str, image_size: tuple[int, int], resize: bool = False,
                 quality: int = 95) -> bytes:
    """Encoded bytes to store for one image: the file itself if it is a right-size JPEG/PNG."""
    return encode_face(path, image_size, resize, "jpg", quality, keep=("jpg", "png"))


# --------------------------------------------------------------------------------------------------
# Writing
# --------------------------------------------------------------------------------------------------

def write_bin(f: BinaryIO, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Pickle (images, issame) with protocol 2 exactly as Python 2 wrote the public .bin files.

    Python 3's own protocol-2 pickler stores bytes as _codecs.encode(latin-1 text), which needs a
    global on load and grows JPEG data by ~50% (UTF-8). Python 2 stored str with (SHORT_)BINSTRING:
    readable by Python 2, by Python 3 with encoding='bytes' (what every .bin reader passes), and by
    restricted unpicklers. The structure is fixed, so the opcodes are written directly.
    """
    def put_list(items: Sequence[bytes | bool], put_item) -> None:
        f.write(pickle.EMPTY_LIST)
        for start in range(0, len(items), 1000):  # batches of APPENDS, as pickle does
            f.write(pickle.MARK)
            for item in items[start:start + 1000]:
                put_item(item)
            f.write(pickle.APPENDS)

    def put_bytes(data: bytes) -> None:
        if len(data) < 256:
            f.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            f.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)

    f.write(pickle.PROTO + b"\x02")
    put_list(list(images), put_bytes)
    put_list([bool(s) for s in issame], lambda s: f.write(pickle.NEWTRUE if s else pickle.NEWFALSE))
    f.write(pickle.TUPLE2 + pickle.STOP)


def make_bin(pairs: Sequence[tuple[str, str, bool]], output: str,
             image_size: tuple[int, int] = (112, 112), resize: bool = False, quality: int = 95,
             force: bool = False, progress: bool = True) -> int:
    """Encode every pair's images and write the .bin atomically; returns the number of pairs."""
    refuse_overwrite([output], force)
    cache: dict[str, bytes] = {}  # LFW reuses images across pairs
    images: list[bytes] = []
    desc = f"making {os.path.basename(output)}"
    for path1, path2, _ in tqdm(pairs, desc=desc, disable=not progress):
        for path in (path1, path2):
            if path not in cache:
                if not os.path.isfile(path):
                    raise FileNotFoundError(f"image listed in the pairs file not found: {path}")
                cache[path] = encode_image(path, image_size, resize, quality)
            images.append(cache[path])
    with atomic_path(output) as tmp:
        with open(tmp, "wb") as f:
            write_bin(f, images, [issame for _, _, issame in pairs])
    return len(pairs)


# --------------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------------

def _image_size(text: str) -> tuple[int, int]:
    parts = text.replace("x", ",").split(",")
    if len(parts) != 2 or not all(p.strip().isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"expected H,W (e.g. 112,112), got {text!r}")
    return int(parts[0]), int(parts[1])


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m tools.make_bin``."""
    parser = argparse.ArgumentParser(prog="python -m tools.make_bin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", required=True,
                        help="pairs list (LFW pairs.txt or 'path1 path2 issame' lines)")
    parser.add_argument("--root", default=None,
                        help="image root (default: the folder of the pairs file)")
    parser.add_argument("--output", required=True, help="the .bin to write")
    parser.add_argument("--format", choices=("auto", "lfw", "list"), default="auto",
                        help="pairs list format (auto: 'lfw' if line 1 is a numeric header)")
    parser.add_argument("--ext", default="jpg",
                        help="image extension for LFW-format names (default jpg)")
    parser.add_argument("--image-size", type=_image_size, default=(112, 112),
                        help="H,W (default 112,112)")
    parser.add_argument("--resize", action="store_true",
                        help="resize images of another size (re-encoded as JPEG)")
    parser.add_argument("--quality", type=int, default=95,
                        help="JPEG quality when re-encoding (default 95)")
    parser.add_argument("--force", action="store_true", help="overwrite --output if it exists")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m tools.make_bin``."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = args.root if args.root is not None else os.path.dirname(os.path.abspath(args.pairs))
    fmt = detect_format(args.pairs) if args.format == "auto" else args.format
    if fmt == "lfw":
        pairs = read_lfw_pairs(args.pairs, root, args.ext)
    else:
        pairs = read_list_pairs(args.pairs, root)
    n = make_bin(pairs, args.output, args.image_size, args.resize, args.quality, args.force)
    n_same = sum(issame for _, _, issame in pairs)
    logger.info("wrote %s: %d pairs (%d same, %d different), %s format pairs list",
                args.output, n, n_same, n - n_same, fmt)
    return 0


if __name__ == "__main__":
    run_cli(main, extra=(ValueError,))  # every ValueError here is about a pairs list or image
