"""Tests for tools/make_bin.py: LFW pairs.txt and 3-column lists -> insightface .bin."""

from __future__ import annotations

import pickle
import pickletools
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from eval import verification as ver
from tools import make_bin

REPO = Path(__file__).resolve().parents[1]


def _face(seed: int, size: int = 112) -> np.ndarray:
    """A smooth BGR image (small JPEG), different per seed."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    return cv2.resize(small, (size, size), interpolation=cv2.INTER_LINEAR)


def _save(path: Path, img: np.ndarray, ext: str = ".jpg") -> bytes:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(ext, img)
    assert ok
    path.write_bytes(buf.tobytes())
    return buf.tobytes()


def _lfw_tree(tmp_path: Path) -> tuple[Path, Path, dict[str, bytes]]:
    root = tmp_path / "lfw"
    files = {}
    names = [("Alice", 1), ("Alice", 2), ("Alice", 3), ("Bob", 1), ("Bob", 2), ("Carol", 1)]
    for seed, (name, n) in enumerate(names):
        key = f"{name}_{n:04d}"
        files[key] = _save(root / name / f"{key}.jpg", _face(seed))
    pairs = tmp_path / "pairs.txt"
    pairs.write_text("2\t2\n"
                     "Alice\t1\t2\nBob\t1\t2\nAlice\t1\tBob\t1\nAlice\t3\tCarol\t1\n"
                     "Alice\t2\t3\nAlice\t1\t3\nBob\t2\tCarol\t1\nAlice\t2\tBob\t1\n")
    return root, pairs, files


def test_lfw_pairs_to_bin(tmp_path):
    root, pairs, files = _lfw_tree(tmp_path)
    out = tmp_path / "lfw.bin"
    assert make_bin.main(["--pairs", str(pairs), "--root", str(root), "--output", str(out)]) == 0

    data = out.read_bytes()
    assert data[:2] == b"\x80\x02"
    ops = list(pickletools.genops(data))
    assert max(op.proto for op, _, _ in ops) <= 2  # a Python 2 reader knows every opcode
    assert not {"GLOBAL", "STACK_GLOBAL", "REDUCE"} & {op.name for op, _, _ in ops}
    with pytest.raises(UnicodeDecodeError):  # images are Python-2 str, as in the public files
        pickle.loads(data)
    bins, issame = pickle.loads(data, encoding="bytes")
    order = ["Alice_0001", "Alice_0002", "Bob_0001", "Bob_0002", "Alice_0001", "Bob_0001",
             "Alice_0003", "Carol_0001", "Alice_0002", "Alice_0003", "Alice_0001", "Alice_0003",
             "Bob_0002", "Carol_0001", "Alice_0002", "Bob_0001"]
    assert bins == [files[k] for k in order]  # right-size JPEGs stored byte for byte, in order
    assert issame == [True, True, False, False] * 2

    (images, flipped), flags = ver.load_bin(out)
    assert flags == issame and images.shape == (16, 3, 112, 112)
    expected = cv2.imdecode(np.frombuffer(files["Bob_0002"], np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    np.testing.assert_array_equal(images[3].numpy(), expected.transpose(2, 0, 1))


def test_list_format_keeps_png_reencodes_others_and_resizes(tmp_path):
    root = tmp_path / "faces"
    png = _save(root / "a.png", _face(1), ".png")
    _save(root / "b.bmp", _face(2), ".bmp")
    _save(root / "c.jpg", _face(3, size=56))
    absolute = tmp_path / "elsewhere" / "d.jpg"
    jpg = _save(absolute, _face(4))
    pairs = tmp_path / "list.txt"
    pairs.write_text(f"a.png b.bmp 1\nc.jpg {absolute} 0\n")
    out = tmp_path / "list.bin"

    with pytest.raises(ValueError, match=r"c\.jpg.*56x56.*--resize"):
        make_bin.main(["--pairs", str(pairs), "--root", str(root), "--output", str(out)])
    assert not out.exists()

    make_bin.main(["--pairs", str(pairs), "--root", str(root), "--output", str(out), "--resize"])
    bins, issame = pickle.loads(out.read_bytes(), encoding="bytes")
    assert issame == [True, False]
    assert bins[0] == png and bins[3] == jpg
    # BMP and resized images are re-encoded as JPEG
    assert bins[1][:3] == b"\xff\xd8\xff" and bins[2][:3] == b"\xff\xd8\xff"
    bmp_back = cv2.imdecode(np.frombuffer(bins[1], np.uint8), cv2.IMREAD_COLOR)
    assert np.abs(bmp_back.astype(int) - _face(2)).mean() < 2.0  # quality 95
    (images, _), _ = ver.load_bin(out)
    assert images.shape == (4, 3, 112, 112)


def test_image_size_option(tmp_path):
    root = tmp_path / "faces"
    for name in "abcd":
        _save(root / f"{name}.png", _face(ord(name), size=32), ".png")
    pairs = root / "list.txt"
    pairs.write_text("a.png b.png 0\nc.png d.png 1\n")
    out = tmp_path / "small.bin"
    # no --root: paths are relative to the pairs file's folder
    make_bin.main(["--pairs", str(pairs), "--output", str(out), "--image-size", "32,32"])
    (images, _), issame = ver.load_bin(out, (32, 32))
    assert images.shape == (4, 3, 32, 32) and issame == [False, True]


def test_refuses_overwrite_without_force(tmp_path):
    root, pairs, _ = _lfw_tree(tmp_path)
    out = tmp_path / "lfw.bin"
    out.write_bytes(b"precious")
    args = ["--pairs", str(pairs), "--root", str(root), "--output", str(out)]
    with pytest.raises(FileExistsError, match="--force"):
        make_bin.main(args)
    assert out.read_bytes() == b"precious"
    make_bin.main(args + ["--force"])
    assert len(pickle.loads(out.read_bytes(), encoding="bytes")[1]) == 8


def test_input_errors_name_file_and_line(tmp_path):
    root, pairs, _ = _lfw_tree(tmp_path)
    out = tmp_path / "x.bin"
    base = ["--root", str(root), "--output", str(out)]

    bad = tmp_path / "bad_list.txt"
    bad.write_text("a.jpg b.jpg 1\na.jpg b.jpg 2\n")
    with pytest.raises(make_bin.PairsFormatError, match=r"bad_list\.txt:2"):
        make_bin.main(["--pairs", str(bad)] + base)

    short = tmp_path / "short.txt"
    short.write_text("10\t300\nAlice\t1\t2\n")
    with pytest.raises(make_bin.PairsFormatError, match="announces 6000 pairs.*has 1"):
        make_bin.main(["--pairs", str(short)] + base)

    fields = tmp_path / "fields.txt"
    fields.write_text("1\nAlice\t1\nAlice\t1\tBob\t1\n")
    with pytest.raises(make_bin.PairsFormatError, match=r"fields\.txt:2"):
        make_bin.main(["--pairs", str(fields)] + base)

    missing = tmp_path / "missing.txt"
    missing.write_text("1\nAlice\t1\t9\nAlice\t1\tBob\t1\n")
    with pytest.raises(FileNotFoundError, match="Alice_0009.jpg"):
        make_bin.main(["--pairs", str(missing)] + base)
    assert not out.exists()


def test_format_detection(tmp_path):
    lfw = tmp_path / "p1.txt"
    lfw.write_text("10\t300\nAlice\t1\t2\n")
    simple = tmp_path / "p2.txt"
    simple.write_text("x/1.jpg y/2.jpg 1\n")
    assert make_bin.detect_format(str(lfw)) == "lfw"
    assert make_bin.detect_format(str(simple)) == "list"


def test_cli_help():
    result = subprocess.run([sys.executable, "-m", "tools.make_bin", "--help"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and "--pairs" in result.stdout and "--force" in result.stdout
