"""utils/recordio.py: round trips, mxnet's byte layout by hand, the mxnet-written fixtures, errors."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from utils.recordio import (
    IRHeader,
    MXIndexedRecordIO,
    MXRecordIO,
    RecordIOError,
    pack,
    pack_img,
    unpack,
    unpack_img,
)

FIXTURES = Path(__file__).resolve().parent / "data" / "mxnet"  # written by mxnet 1.9.1, see data/README.md
MAGIC = b"\x0a\x23\xd7\xce"  # 0xced7230a, little-endian


def lrec(cflag: int, length: int) -> bytes:
    return struct.pack("<I", cflag << 29 | length)


def framed(payload: bytes, cflag: int = 0) -> bytes:
    """One record part as dmlc-core writes it: magic, lrec, payload, zero padding to 4 bytes."""
    return MAGIC + lrec(cflag, len(payload)) + payload + b"\0" * (-len(payload) % 4)


def write_indexed(tmp_path: Path, records: list[bytes], name: str = "t") -> tuple[Path, Path]:
    rec, idx = tmp_path / f"{name}.rec", tmp_path / f"{name}.idx"
    w = MXIndexedRecordIO(idx, rec, "w")
    for k, r in enumerate(records):
        w.write_idx(k, r)
    w.close()
    return rec, idx


def read_all(rec: Path) -> list[bytes]:
    r = MXRecordIO(rec, "r")
    out = []
    while (s := r.read()) is not None:
        out.append(s)
    r.close()
    return out


# ------------------------------------------------------------------------------------------
# round trips
# ------------------------------------------------------------------------------------------
def test_round_trip_payload_lengths_0_to_9(tmp_path):
    payloads = [bytes(range(1, n + 1)) for n in range(10)]
    rec, idx = write_indexed(tmp_path, payloads)
    assert read_all(rec) == payloads
    r = MXIndexedRecordIO(idx, rec, "r")
    assert r.keys == list(range(10))
    for k in reversed(range(10)):  # random access, any order
        assert r.read_idx(k) == payloads[k]
    # every record is 8 header bytes + the payload padded to 4
    assert rec.stat().st_size == sum(8 + (n + 3) // 4 * 4 for n in range(10))


@pytest.mark.parametrize(
    "label", [0.0, 3.0, 85741.0, -1.5, [1.0, 2.0], [7.0, 0.25, -3.0], np.array([5, 1], np.float32)]
)
@pytest.mark.parametrize("payload", [b"", b"x", b"abcdefg", bytes(range(256))])
def test_pack_unpack_round_trip(label, payload):
    header, body = unpack(pack(IRHeader(0, label, 42, 7), payload))
    assert body == payload
    assert (header.id, header.id2) == (42, 7)
    if np.ndim(label) == 0:
        assert header.flag == 0 and header.label == label
    else:
        assert header.flag == len(label)
        np.testing.assert_array_equal(header.label, np.asarray(label, np.float32))


def test_pack_img_unpack_img_png_is_lossless():
    img = np.random.default_rng(0).integers(0, 256, (9, 7, 3), dtype=np.uint8)
    header, back = unpack_img(pack_img(IRHeader(0, 2.0, 1, 0), img, img_fmt=".png"))
    assert header.label == 2.0
    np.testing.assert_array_equal(back, img)


# ------------------------------------------------------------------------------------------
# mxnet's byte layout, computed by hand
# ------------------------------------------------------------------------------------------
def test_record_bytes_and_index_lines(tmp_path):
    payloads = [b"", b"a", b"abcde", b"abcd"]
    rec, idx = write_indexed(tmp_path, payloads)
    expected = (
        MAGIC + lrec(0, 0)
        + MAGIC + lrec(0, 1) + b"a\0\0\0"
        + MAGIC + lrec(0, 5) + b"abcde\0\0\0"
        + MAGIC + lrec(0, 4) + b"abcd"
    )
    assert rec.read_bytes() == expected
    assert idx.read_text() == "0\t0\n1\t8\n2\t20\n3\t36\n"


def test_irheader_bytes_scalar_and_array_label():
    # struct '<IfQQ': flag, label, id, id2; a scalar label forces flag 0 (mxnet ignores the given flag)
    assert pack(IRHeader(5, 3.0, 7, 9), b"xy") == struct.pack("<IfQQ", 0, 3.0, 7, 9) + b"xy"
    assert pack(IRHeader(0, 3.0, 7, 9), b"xy") == (
        b"\0\0\0\0" + b"\x00\x00\x40\x40" + b"\x07" + b"\0" * 7 + b"\x09" + b"\0" * 7 + b"xy"
    )
    # an array label: flag = its size, label field 0, float32 values before the payload
    assert pack(IRHeader(0, [1.0, 2.5], 7, 0), b"z") == (
        struct.pack("<IfQQ", 2, 0.0, 7, 0) + struct.pack("<ff", 1.0, 2.5) + b"z"
    )


def test_magic_at_aligned_offsets_splits_the_record(tmp_path):
    payload = b"abcd" + MAGIC + b"efgh" + MAGIC + b"ij"
    rec, idx = write_indexed(tmp_path, [payload, b"next"])
    first = framed(b"abcd", 1) + framed(b"efgh", 2) + framed(b"ij", 3)
    assert rec.read_bytes() == first + framed(b"next")
    assert idx.read_text() == f"0\t0\n1\t{len(first)}\n"
    assert read_all(rec) == [payload, b"next"]
    r = MXIndexedRecordIO(idx, rec, "r")
    assert r.read_idx(1) == b"next" and r.read_idx(0) == payload


@pytest.mark.parametrize(
    "payload, parts",
    [
        (MAGIC, [(b"", 1), (b"", 3)]),  # magic at offset 0 and nothing after it
        (MAGIC + MAGIC + b"q", [(b"", 1), (b"", 2), (b"q", 3)]),
        (b"abcd" + MAGIC, [(b"abcd", 1), (b"", 3)]),
        (b"x" + MAGIC + b"yyy", [(b"x" + MAGIC + b"yyy", 0)]),  # unaligned: not split
        (b"abc" + MAGIC, [(b"abc" + MAGIC, 0)]),  # unaligned at the end: not split
    ],
)
def test_magic_split_cases(tmp_path, payload, parts):
    rec, _ = write_indexed(tmp_path, [payload])
    assert rec.read_bytes() == b"".join(framed(p, c) for p, c in parts)
    assert read_all(rec) == [payload]


def test_image_record_containing_magic_round_trips(tmp_path):
    # id2 = magic puts the magic number at payload offset 16 (aligned) inside the IRHeader
    header = IRHeader(0, [3.0, 1.0], 5, 0xCED7230A)
    body = b"\x11" * 8 + MAGIC + b"\x22" * 5
    rec, idx = write_indexed(tmp_path, [pack(header, body)])
    h, b = unpack(MXIndexedRecordIO(idx, rec, "r").read_idx(0))
    assert (h.id, h.id2, list(h.label), b) == (5, 0xCED7230A, [3.0, 1.0], body)
    assert rec.read_bytes()[4:8] == lrec(1, 16)


# ------------------------------------------------------------------------------------------
# files written by mxnet 1.9.1
# ------------------------------------------------------------------------------------------
def fixture_records() -> list[dict]:
    return json.loads((FIXTURES / "expected.json").read_text())["records"]


def test_fixture_reads_as_mxnet_unpacked_it():
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    expected = fixture_records()
    assert r.keys == [e["key"] for e in expected] == list(range(25))
    for e in expected:
        header, payload = unpack(r.read_idx(e["key"]))
        assert (header.flag, header.id, header.id2) == (e["flag"], e["id"], e["id2"])
        np.testing.assert_array_equal(np.asarray(header.label), np.asarray(e["label"], np.float32))
        assert len(payload) == e["payload_length"]
        assert hashlib.sha256(payload).hexdigest() == e["payload_sha256"]


def test_fixture_rewritten_byte_for_byte(tmp_path):
    src = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    w = MXIndexedRecordIO(idx, rec, "w")
    for e in fixture_records():
        _, payload = unpack(src.read_idx(e["key"]))
        label = e["label"] if e["flag"] == 0 else list(e["label"])
        w.write_idx(e["key"], pack(IRHeader(e["flag"], label, e["id"], e["id2"]), payload))
    w.close()
    assert rec.read_bytes() == (FIXTURES / "train.rec").read_bytes()
    assert idx.read_text() == (FIXTURES / "train.idx").read_text()


def test_fixture_plain_rec_sequential(tmp_path):
    records = read_all(FIXTURES / "plain.rec")
    assert len(records) == 5
    headers = [unpack(s) for s in records]
    assert [h.label for h, _ in headers] == [0.0, 1.0, 2.0, 3.0, 4.0]
    assert [h.flag for h, _ in headers] == [0] * 5
    assert [len(p) for _, p in headers] == [97, 98, 99, 100, 101]
    # writing the same records again gives the same bytes, the last record's padding included
    w = MXRecordIO(tmp_path / "plain.rec", "w")
    for s in records:
        w.write(s)
    w.close()
    assert (tmp_path / "plain.rec").read_bytes() == (FIXTURES / "plain.rec").read_bytes()


def test_reset_rereads_from_start():
    r = MXRecordIO(FIXTURES / "plain.rec", "r")
    first = r.read()
    r.read()
    r.reset()
    assert r.read() == first


# ------------------------------------------------------------------------------------------
# errors
# ------------------------------------------------------------------------------------------
def test_missing_rec(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.rec"):
        MXRecordIO(tmp_path / "nope.rec", "r")


def test_missing_idx_says_how_to_rebuild(tmp_path):
    rec, idx = write_indexed(tmp_path, [b"abc"])
    idx.unlink()
    with pytest.raises(FileNotFoundError, match=r"t\.idx.*python -m tools\.rec2idx .*t\.rec"):
        MXIndexedRecordIO(idx, rec, "r")


def copy_fixture(tmp_path: Path) -> tuple[Path, Path]:
    rec, idx = tmp_path / "train.rec", tmp_path / "train.idx"
    rec.write_bytes((FIXTURES / "train.rec").read_bytes())
    idx.write_bytes((FIXTURES / "train.idx").read_bytes())
    return rec, idx


@pytest.mark.parametrize("cut", [4300 + 3, 4300 + 8 + 100])  # inside the header, inside the payload
def test_truncated_record_names_file_and_offset(tmp_path, cut):
    rec, idx = copy_fixture(tmp_path)
    rec.write_bytes(rec.read_bytes()[:cut])
    r = MXIndexedRecordIO(idx, rec, "r")
    assert len(unpack(r.read_idx(2))[1]) == 2052  # records before the cut still read
    with pytest.raises(RecordIOError, match=r"train\.rec: record at byte 4300 is truncated"):
        r.read_idx(3)
    seq = MXRecordIO(rec, "r")
    seq.read(), seq.read(), seq.read()
    with pytest.raises(RecordIOError, match="record at byte 4300 is truncated"):
        seq.read()


def test_wrong_magic(tmp_path):
    rec, idx = copy_fixture(tmp_path)
    data = bytearray(rec.read_bytes())
    data[6368] ^= 0xFF  # first byte of record 4's magic
    rec.write_bytes(bytes(data))
    r = MXIndexedRecordIO(idx, rec, "r")
    with pytest.raises(RecordIOError, match=r"train\.rec: no record at byte 6368"):
        r.read_idx(4)


def test_key_not_in_index():
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    with pytest.raises(KeyError, match=r"train\.idx: key 99 is not in the index \(25 keys\)"):
        r.read_idx(99)
    with pytest.raises(RecordIOError):
        r.read_idx(99)


def test_index_pointing_past_the_end(tmp_path):
    rec, idx = copy_fixture(tmp_path)
    idx.write_text(idx.read_text() + "25\t999999\n")
    r = MXIndexedRecordIO(idx, rec, "r")
    with pytest.raises(RecordIOError, match=r"key 25 points at byte 999999, past the end .*42308 bytes"):
        r.read_idx(25)


def test_malformed_index_line(tmp_path):
    rec, idx = copy_fixture(tmp_path)
    idx.write_text("0\t0\n1 40\n")
    with pytest.raises(RecordIOError, match=r"train\.idx: line 2 is not 'key<TAB>offset'"):
        MXIndexedRecordIO(idx, rec, "r")


def test_unpack_short_record():
    with pytest.raises(RecordIOError, match="shorter than the 24-byte header"):
        unpack(b"\0" * 10)
    with pytest.raises(RecordIOError, match="says 3 labels"):
        unpack(struct.pack("<IfQQ", 3, 0, 0, 0) + b"\0" * 8)


# ------------------------------------------------------------------------------------------
# readers shared with DataLoader workers
# ------------------------------------------------------------------------------------------
def digests(r: MXIndexedRecordIO, keys) -> list[str]:
    return [hashlib.sha256(r.read_idx(k)).hexdigest() for k in keys]


def test_reader_pickled_reads_correctly():
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    expected = digests(r, range(25))
    r.seek(3)
    r2 = pickle.loads(pickle.dumps(r))
    assert digests(r2, range(25)) == expected
    # the sequential position travels too
    r3 = pickle.loads(pickle.dumps(MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")))
    r3.seek(3)
    assert hashlib.sha256(r3.read()).hexdigest() == expected[3]


def test_reader_in_spawned_process():
    # what a DataLoader worker gets under the "spawn" start method: the pickled reader
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    expected = [r.read_idx(k) for k in range(25)]
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        assert pool.map(r.read_idx, range(25)) == expected


def _child_reads(r, keys, q):
    q.put(digests(r, keys))


def test_reader_used_after_fork():
    r = MXIndexedRecordIO(FIXTURES / "train.idx", FIXTURES / "train.rec", "r")
    expected = digests(r, range(25))
    r.seek(0)
    r.read()  # the parent is mid-file when it forks
    ctx = multiprocessing.get_context("fork")
    q = ctx.Queue()
    children = [ctx.Process(target=_child_reads, args=(r, keys, q)) for keys in (range(25), range(24, -1, -1))]
    for c in children:
        c.start()
    parent = digests(r, range(12, 25))  # reads interleave with the children's
    got = sorted((q.get(timeout=30) for _ in children), key=lambda d: d[0] != expected[0])
    for c in children:
        c.join(timeout=30)
        assert c.exitcode == 0
    assert got[0] == expected and got[1] == expected[::-1]
    assert parent == expected[12:]
    assert hashlib.sha256(r.read()).hexdigest() == expected[1]
