"""RecordIO without mxnet: a drop-in for ``mxnet.recordio`` (1.9.1), bit for bit.

A ``.rec`` file is a sequence of records. Each record is::

    uint32 magic = 0xced7230a | uint32 lrec = cflag << 29 | length | payload | zero padding to 4 bytes

dmlc-core's writer splits a payload wherever the magic number appears at a 4-byte aligned
offset (cflag 1 = first part, 2 = middle, 3 = last; 0 = whole record) and drops that magic;
the reader puts it back. Image records start with an ``IRHeader`` (struct ``IfQQ``, 24 bytes)
and, when the label is an array, ``flag`` float32 label values. The ``.idx`` file maps a key
to the byte offset of its record, one ``key\\toffset`` line each.

Reads go through ``os.pread`` so a reader opened before ``fork`` (DataLoader workers) is safe
to share: there is no file position to fight over.
"""

from __future__ import annotations

import numbers
import os
import struct
from typing import Any, Callable, Iterator, NamedTuple

import numpy as np

from utils.errors import RecordIOError, RecordKeyError

__all__ = [
    "IRHeader",
    "MXIndexedRecordIO",
    "MXRecordIO",
    "RecordIOError",
    "pack",
    "pack_img",
    "unpack",
    "unpack_img",
]

MAGIC = 0xCED7230A
_MAGIC_BYTES = struct.pack("<I", MAGIC)
_LENGTH_MASK = (1 << 29) - 1
_IR_FORMAT = "<IfQQ"
_IR_SIZE = struct.calcsize(_IR_FORMAT)  # 24

class IRHeader(NamedTuple):
    """Image record header: flag (label count, 0 for a scalar label), label, id, id2 (mxnet's HEADER)."""

    flag: int
    label: Any  # a float, or a float32 array of ``flag`` values
    id: int
    id2: int


def _align4(n: int) -> int:
    return (n + 3) & ~3


def _aligned_magic(buf: bytes) -> Iterator[int]:
    """Offsets of the magic number at 4-byte-aligned positions (where dmlc-core splits)."""
    i = buf.find(_MAGIC_BYTES)
    while i != -1:
        if i % 4 == 0:
            yield i
            i = buf.find(_MAGIC_BYTES, i + 4)
        else:
            i = buf.find(_MAGIC_BYTES, i + 1)


class MXRecordIO:
    """Sequential RecordIO reader (``flag='r'``) or writer (``flag='w'``), as ``mxnet.recordio``."""

    def __init__(self, uri: str | os.PathLike, flag: str):
        self.uri = os.fspath(uri)
        self.flag = flag
        self.is_open = False
        self.open()

    # -- life cycle ---------------------------------------------------------------------------
    def open(self) -> None:
        """Open the file (truncating it in write mode, as mxnet does)."""
        if self.flag == "w":
            self._writer = open(self.uri, "wb")
            self.writable = True
        elif self.flag == "r":
            try:
                self._fd = os.open(self.uri, os.O_RDONLY)
            except FileNotFoundError:
                raise FileNotFoundError(f"{self.uri}: RecordIO file not found") from None
            self._size = os.fstat(self._fd).st_size
            self._pos = 0
            self.writable = False
        else:
            raise ValueError(f"Invalid flag {self.flag!r}: use 'r' or 'w'")
        self.is_open = True

    def close(self) -> None:
        """Close the file; safe to call twice."""
        if not self.is_open:
            return
        if self.writable:
            self._writer.close()
        else:
            os.close(self._fd)
        self.is_open = False

    def reset(self) -> None:
        """Reopen: a reader goes back to the first record; a writer starts the file again."""
        self.close()
        self.open()

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getstate__(self) -> dict:
        # file descriptors do not pickle; a reader reopens where it was (DataLoader "spawn")
        if self.writable:
            raise TypeError(f"{self.uri}: a RecordIO writer cannot be pickled")
        return {k: v for k, v in self.__dict__.items() if k != "_fd"}

    def __setstate__(self, state: dict) -> None:
        # reopen the data file only (MXRecordIO.open, also for the indexed reader: its index is in the state)
        self.__dict__.update(state)
        if self.is_open:
            pos = self._pos
            self.is_open = False
            MXRecordIO.open(self)
            self._pos = pos

    # -- writing ------------------------------------------------------------------------------
    def write(self, buf: bytes) -> None:
        """Append one record (split at aligned magic numbers exactly as dmlc-core does)."""
        if not self.writable:
            raise RecordIOError(f"{self.uri}: opened for reading, cannot write")
        buf = bytes(buf)
        length = len(buf)
        if length >= 1 << 29:
            raise RecordIOError(f"{self.uri}: record of {length} bytes is over the 2^29 limit")
        out = self._writer
        start = 0
        for i in _aligned_magic(buf):
            cflag = 1 if start == 0 else 2
            out.write(struct.pack("<II", MAGIC, (cflag << 29) | (i - start)))
            out.write(buf[start:i])
            start = i + 4
        cflag = 3 if start != 0 else 0
        out.write(struct.pack("<II", MAGIC, (cflag << 29) | (length - start)))
        out.write(buf[start:])
        out.write(b"\x00" * (_align4(length) - length))

    def tell(self) -> int:
        """Byte offset where the next record will be written."""
        if not self.writable:
            raise RecordIOError(f"{self.uri}: tell() is for writers")
        return self._writer.tell()

    # -- reading ------------------------------------------------------------------------------
    def _pread(self, n: int, pos: int, what: str, record_start: int) -> bytes:
        data = os.pread(self._fd, n, pos)
        if len(data) != n:
            raise RecordIOError(
                f"{self.uri}: record at byte {record_start} is truncated "
                f"({what}: need {n} bytes at byte {pos}, file ends after {len(data)})"
            )
        return data

    def _read_at(self, pos: int) -> tuple[bytes | None, int]:
        """Read the record starting at ``pos``; return (payload, offset after it)."""
        if pos >= self._size:
            return None, pos
        start = pos
        parts: list[bytes] = []
        while True:
            magic, lrec = struct.unpack("<II", self._pread(8, pos, "header", start))
            if magic != MAGIC:
                raise RecordIOError(
                    f"{self.uri}: no record at byte {pos} (magic {magic:#010x}, "
                    f"expected {MAGIC:#010x}); the file or its .idx is corrupt"
                )
            cflag, length = lrec >> 29, lrec & _LENGTH_MASK
            if cflag > 3:
                raise RecordIOError(f"{self.uri}: record at byte {pos} has invalid cflag {cflag}")
            parts.append(self._pread(length, pos + 8, "payload", start))
            pos += 8 + _align4(length)
            if cflag in (0, 3):
                return _MAGIC_BYTES.join(parts), pos

    def read(self) -> bytes | None:
        """Next record's payload, or None at the end of the file."""
        if self.writable:
            raise RecordIOError(f"{self.uri}: opened for writing, cannot read")
        payload, self._pos = self._read_at(self._pos)
        return payload


class MXIndexedRecordIO(MXRecordIO):
    """RecordIO with a ``.idx`` index for random access, as ``mxnet.recordio``."""

    def __init__(
        self,
        idx_path: str | os.PathLike,
        uri: str | os.PathLike,
        flag: str,
        key_type: Callable[[str], Any] = int,
    ):
        self.idx_path = os.fspath(idx_path)
        self.key_type = key_type
        self.idx: dict = {}
        self.keys: list = []
        super().__init__(uri, flag)

    def open(self) -> None:
        if self.flag == "r" and not os.path.exists(self.idx_path):
            raise FileNotFoundError(
                f"{self.idx_path}: index file not found; rebuild it from the .rec with "
                f"`python -m tools.rec2idx {os.fspath(self.uri)}`"
            )
        super().open()
        self.idx, self.keys = {}, []
        if self.writable:
            self._fidx = open(self.idx_path, "w")
            return
        with open(self.idx_path) as f:
            for lineno, line in enumerate(f, 1):
                fields = line.strip().split("\t")
                if fields == [""]:
                    continue
                try:
                    key, offset = self.key_type(fields[0]), int(fields[1])
                except (IndexError, ValueError):
                    raise RecordIOError(
                        f"{self.idx_path}: line {lineno} is not 'key<TAB>offset': {line!r}"
                    ) from None
                self.idx[key] = offset
                self.keys.append(key)

    def close(self) -> None:
        if self.is_open and self.writable:
            self._fidx.close()
        super().close()


    def seek(self, idx) -> None:
        """Move the sequential reader to the record of key ``idx``."""
        if self.writable:
            raise RecordIOError(f"{self.uri}: seek() is for readers")
        self._pos = self._offset(idx)

    def _offset(self, idx) -> int:
        try:
            return self.idx[idx]
        except KeyError:
            raise RecordKeyError(
                f"{self.idx_path}: key {idx!r} is not in the index ({len(self.idx)} keys)"
            ) from None

    def read_idx(self, idx) -> bytes:
        """Payload of the record with key ``idx``."""
        offset = self._offset(idx)
        payload, _ = self._read_at(offset)
        if payload is None:
            raise RecordIOError(
                f"{self.uri}: key {idx!r} points at byte {offset}, past the end of the file "
                f"({self._size} bytes); the index does not belong to this file"
            )
        return payload

    def write_idx(self, idx, buf: bytes) -> None:
        """Write a record and index it under key ``idx``."""
        key = self.key_type(idx)
        pos = self.tell()
        self.write(buf)
        self._fidx.write(f"{key}\t{pos}\n")
        self.idx[key] = pos
        self.keys.append(key)


def pack(header: IRHeader | tuple, s: bytes) -> bytes:
    """Prefix ``s`` with an image-record header; an array label is stored after it (flag = size)."""
    header = IRHeader(*header)
    if isinstance(header.label, numbers.Number):
        header = header._replace(flag=0)
    else:
        label = np.asarray(header.label, dtype=np.float32)
        header = header._replace(flag=label.size, label=0)
        s = label.tobytes() + s
    return struct.pack(_IR_FORMAT, *header) + s


def unpack(s: bytes) -> tuple[IRHeader, bytes]:
    """Split a record into its header (array label as float32 when flag > 0) and payload."""
    if len(s) < _IR_SIZE:
        raise RecordIOError(f"record of {len(s)} bytes is shorter than the {_IR_SIZE}-byte header")
    header = IRHeader(*struct.unpack(_IR_FORMAT, s[:_IR_SIZE]))
    s = s[_IR_SIZE:]
    if header.flag > 0:
        if len(s) < 4 * header.flag:
            raise RecordIOError(
                f"record header says {header.flag} labels but only {len(s)} bytes follow"
            )
        header = header._replace(label=np.frombuffer(s, np.float32, header.flag))
        s = s[header.flag * 4 :]
    return header, s


def unpack_img(s: bytes, iscolor: int = -1) -> tuple[IRHeader, np.ndarray]:
    """Unpack a record and decode its image with OpenCV (BGR, as mxnet)."""
    import cv2

    header, s = unpack(s)
    img = cv2.imdecode(np.frombuffer(s, dtype=np.uint8), iscolor)
    if img is None:
        raise RecordIOError(f"record id {header.id}: payload of {len(s)} bytes is not an image")
    return header, img


def pack_img(header: IRHeader | tuple, img: np.ndarray, quality: int = 95, img_fmt: str = ".jpg") -> bytes:
    """Encode ``img`` (BGR) with OpenCV and pack it with ``header``."""
    import cv2

    fmt = img_fmt.upper()
    if fmt in (".JPG", ".JPEG"):
        params = [cv2.IMWRITE_JPEG_QUALITY, quality]
    elif fmt == ".PNG":
        params = [cv2.IMWRITE_PNG_COMPRESSION, quality]
    else:
        params = []
    ok, buf = cv2.imencode(img_fmt, img, params)
    if not ok:
        raise RecordIOError(f"OpenCV could not encode the image as {img_fmt}")
    return pack(header, buf.tobytes())
