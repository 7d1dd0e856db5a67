"""utils/safe_pickle.py: plain data and uint8/bool numpy arrays load; anything that would run code does not."""

from __future__ import annotations

import io
import os
import pickle

import numpy as np
import pytest

from test_verification import _py2_ndarray, _py2_str
from utils import safe_pickle


def _load(data: bytes):
    return safe_pickle.load(io.BytesIO(data))


class _MakeDir:
    """Unpickling this would create a directory: the side effect the unpickler must never allow."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __reduce__(self):
        return (os.mkdir, (self.target,))


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_plain_data_and_numpy_arrays_load(protocol):
    images = [np.arange(6, dtype=np.uint8).reshape(2, 3), np.asfortranarray(np.eye(3, dtype=np.uint8))]
    obj = {"b": b"\xff\x00raw", "s": "text", "n": [1, 2.5, None, True], "t": (images, np.array([True, False])),
           "flag": np.True_}
    if protocol >= 4:  # older protocols pickle a set as a call of builtins.set: refused
        obj["set"] = {1, 2}
    got = _load(pickle.dumps(obj, protocol=protocol))
    arrays, issame = got["t"]
    assert all(type(a) is np.ndarray for a in (*arrays, issame))
    assert all(np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(arrays, images))
    assert arrays[1].flags.f_contiguous  # the Fortran order survives
    assert issame.dtype == bool and issame.tolist() == [True, False]
    assert type(got["flag"]) is np.bool_ and got["flag"]
    assert (got["b"], got["s"], got["n"], got.get("set")) == (
        b"\xff\x00raw", "text", [1, 2.5, None, True], {1, 2} if protocol >= 4 else None)


def test_python2_pickles_keep_raw_bytes_and_arrays():
    # Python 2 str under protocol 2 stays bytes (encoding='bytes'); a Python 2 numpy array loads
    data = b"\x80\x02(" + _py2_str(b"\xff\xd8jpeg") + _py2_ndarray(np.array([7, 8], np.uint8)) + b"l."
    raw, array = _load(data)
    assert raw == b"\xff\xd8jpeg" and array.tolist() == [7, 8] and array.dtype == np.uint8


def test_a_list_that_holds_itself_loads():
    loop: list = [np.zeros(2, np.uint8)]
    loop.append(loop)
    got = _load(pickle.dumps(loop, protocol=2))
    assert got[1] is got and type(got[0]) is np.ndarray


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_a_global_is_refused_before_it_is_called(tmp_path, protocol):
    target = tmp_path / "pwned"
    with pytest.raises(pickle.UnpicklingError, match=r"refusing to load global '(posix|os)\.mkdir'"):
        _load(pickle.dumps([_MakeDir(str(target))], protocol=protocol))
    assert not target.exists()


def test_malicious_variants_are_refused(tmp_path):
    target = tmp_path / "pwned"
    cases = {
        # INST opcode (class instantiation by name)
        "inst": b"(V" + str(target).encode() + b"\nios\nmkdir\n.",
        # numpy object arrays would unpickle arbitrary objects through numpy
        "object_array": pickle.dumps([np.array([1, "a"], dtype=object)], protocol=2),
        # other dtypes are refused too (only uint8 and bool are data a .bin holds)
        "float_array": pickle.dumps(np.array([1.0]), protocol=2),
        # persistent ids need a persistent_load hook
        "persid": b"\x80\x02P1\n.",
        # BUILD (attribute setting) on an allowed global: the stand-ins cannot be tampered with
        "build_global": b"\x80\x02cnumpy\nndarray\n}X\x03\x00\x00\x00fooK\x01sb.",
        # _codecs.encode is allowed only as (str, 'latin1')
        "codecs": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x05\x00\x00\x00rot13\x86R.",
        # an allowed global handed out as data
        "bare_global": b"\x80\x02cnumpy\ndtype\n.",
        # an array reconstructed without its data (no BUILD)
        "unfilled": b"\x80\x02cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85C\x01b\x87R.",
    }
    for data in cases.values():
        with pytest.raises(pickle.UnpicklingError):
            _load(data)
    assert not target.exists()
    with pytest.raises(pickle.UnpicklingError, match="dtype 'f8' is not allowed"):
        _load(cases["float_array"])
    with pytest.raises(pickle.UnpicklingError, match="without its data"):
        _load(cases["unfilled"])
