"""A restricted unpickler for data pickles from elsewhere (e.g. Python 2 verification .bin files).

:func:`load` reads pickles made of the builtin types (bytes, str, numbers, bools, None, lists,
tuples, dicts; sets from protocol 4 on) plus a few globals, each replaced by a harmless stand-in that validates its
arguments:

* ``_codecs.encode``: Python 3 writes bytes this way under protocol <= 2 (text, ``'latin1'``);
* numpy arrays and numpy bool scalars, of dtype ``uint8`` or ``bool`` only (insightface's
  cfp_fp/agedb scripts pickled ``cv2.imencode`` results, and some issame lists are bool arrays).
  No numpy code sees the raw pickled state: the stand-ins rebuild arrays with ``np.frombuffer``.

Every other global (``os.system``, ``builtins.eval``, ...) is refused before anything is called,
and the stand-ins cannot be modified by a BUILD opcode. Failures raise ``pickle.UnpicklingError``
(or the error the malformed stream causes: ``EOFError``, ``ValueError``, ...); nothing runs.
"""

from __future__ import annotations

import math
import pickle
from typing import IO, Any

import numpy as np

__all__ = ["load"]

_NUMPY_MULTIARRAY = ("numpy.core.multiarray", "numpy._core.multiarray")
_NUMPY_NUMERIC = ("numpy.core.numeric", "numpy._core.numeric")
_ALLOWED_DTYPES = {"b1": np.dtype(bool), "?": np.dtype(bool), "u1": np.dtype(np.uint8)}


def _text(value: Any) -> str:
    """A str from a pickled str or (Python 2 str read with encoding='bytes') bytes."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    if isinstance(value, str):
        return value
    raise pickle.UnpicklingError(f"expected a string, got {type(value).__name__}")


def _raw_bytes(value: Any) -> bytes:
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, str):  # Python 2 str loaded as text
        return value.encode("latin-1")
    raise pickle.UnpicklingError(f"expected array data as bytes, got {type(value).__name__}")


def _safe_codecs_encode(text: Any, encoding: Any = "utf-8", errors: Any = "strict") -> bytes:
    if not isinstance(text, str) or _text(encoding).lower() not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode is only allowed as (str, 'latin1')")
    return text.encode("latin-1")


class _DtypeStandIn:
    """A pickled numpy dtype, restricted to bool and uint8."""

    def __init__(self, descr: Any, align: Any = 0, copy: Any = 0) -> None:
        name = _text(descr)
        if name not in _ALLOWED_DTYPES:
            raise pickle.UnpicklingError(f"numpy dtype {name!r} is not allowed (only bool, uint8)")
        self.dtype = _ALLOWED_DTYPES[name]

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subdtype, names, fields, elsize, alignment, flags): one-byte types
        # have byteorder '|' and no fields; anything else is not a plain bool/uint8 dtype.
        if not isinstance(state, tuple) or len(state) < 5:
            raise pickle.UnpicklingError("malformed numpy dtype state")
        if _text(state[1]) not in ("|", "=") or any(s is not None for s in state[2:5]):
            raise pickle.UnpicklingError("numpy dtype state describes a non-plain dtype")


def _dtype_of(value: Any) -> np.dtype:
    if not isinstance(value, _DtypeStandIn):
        raise pickle.UnpicklingError("numpy array without a pickled dtype")
    return value.dtype


def _shape_of(value: Any) -> tuple[int, ...]:
    if not isinstance(value, tuple) or not all(isinstance(d, int) and d >= 0 for d in value):
        raise pickle.UnpicklingError(f"malformed numpy shape {value!r}")
    return value


def _array_from_bytes(raw: Any, dtype: np.dtype, shape: tuple[int, ...],
                      fortran: bool) -> np.ndarray:
    raw = _raw_bytes(raw)
    if len(raw) != math.prod(shape) * dtype.itemsize:
        raise pickle.UnpicklingError(f"numpy array data has {len(raw)} bytes for shape {shape}")
    flat = np.frombuffer(raw, dtype=np.uint8)
    flat = flat != 0 if dtype == np.dtype(bool) else flat.copy()
    return flat.reshape(shape, order="F" if fortran else "C")


class _ArrayStandIn:
    """Result of numpy's _reconstruct; filled by BUILD (__setstate__) with validated state."""

    value: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise pickle.UnpicklingError("malformed numpy array state")
        shape, dtype, fortran, raw = state[-4:]
        self.value = _array_from_bytes(raw, _dtype_of(dtype), _shape_of(shape), bool(fortran))


def _refuse_ndarray_call(*args: Any) -> None:
    raise pickle.UnpicklingError("numpy.ndarray may only appear as an argument of _reconstruct")


class _Guarded:
    """An allowed global as the unpickler hands it out: callable, but immune to BUILD/setattr."""

    __slots__ = ("_fn",)

    def __init__(self, fn: Any) -> None:
        object.__setattr__(self, "_fn", fn)

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setattr__(self, name: str, value: Any) -> None:
        raise pickle.UnpicklingError("allowed globals cannot be modified")

    def __setstate__(self, state: Any) -> None:
        raise pickle.UnpicklingError("allowed globals cannot be modified")


_NDARRAY = _Guarded(_refuse_ndarray_call)  # stands for numpy.ndarray, only valid in _reconstruct


def _safe_reconstruct(cls: Any, shape: Any, typecode: Any) -> _ArrayStandIn:
    if cls is not _NDARRAY:
        raise pickle.UnpicklingError("numpy _reconstruct is only allowed for numpy.ndarray")
    return _ArrayStandIn()


def _safe_frombuffer(buf: Any, dtype: Any, shape: Any, order: Any = "C") -> _ArrayStandIn:
    # numpy's protocol-5 form: (buffer, dtype, shape, order)
    out = _ArrayStandIn()
    out.value = _array_from_bytes(buf, _dtype_of(dtype), _shape_of(shape), _text(order) == "F")
    return out


def _safe_scalar(dtype: Any, raw: Any = b"") -> np.bool_:
    if _dtype_of(dtype) != np.dtype(bool):
        raise pickle.UnpicklingError("only numpy bool scalars are allowed")
    return np.bool_(_array_from_bytes(raw, np.dtype(bool), (), False)[()])


_SAFE_GLOBALS: dict[tuple[str, str], _Guarded] = {
    ("_codecs", "encode"): _Guarded(_safe_codecs_encode),
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _Guarded(_DtypeStandIn),
}
for _module in _NUMPY_MULTIARRAY:
    _SAFE_GLOBALS[(_module, "_reconstruct")] = _Guarded(_safe_reconstruct)
    _SAFE_GLOBALS[(_module, "scalar")] = _Guarded(_safe_scalar)
for _module in _NUMPY_NUMERIC:
    _SAFE_GLOBALS[(_module, "_frombuffer")] = _Guarded(_safe_frombuffer)


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load global '{module}.{name}' (only plain data, numpy uint8/bool "
                "arrays and bools may be unpickled; this file would call code)") from None


def _resolve(obj: Any, seen: set[int]) -> Any:
    """``obj`` with every array stand-in replaced by its numpy array (lists and dicts in place)."""
    if isinstance(obj, _ArrayStandIn):
        if obj.value is None:
            raise pickle.UnpicklingError("a numpy array without its data (no BUILD after _reconstruct)")
        return obj.value
    if isinstance(obj, (list, dict)):
        if id(obj) in seen:  # a list that holds itself
            return obj
        seen.add(id(obj))
        if isinstance(obj, list):
            obj[:] = [_resolve(item, seen) for item in obj]
        else:
            for key in obj:
                _refuse_stand_in(key)
                obj[key] = _resolve(obj[key], seen)
        return obj
    if isinstance(obj, tuple):
        return tuple(_resolve(item, seen) for item in obj)
    if isinstance(obj, (set, frozenset)):
        for item in obj:
            _refuse_stand_in(item)
        return obj
    _refuse_stand_in(obj)
    return obj


def _refuse_stand_in(obj: Any) -> None:
    """Stand-ins where no array can be (a dict key, a set member, a bare dtype or global)."""
    if isinstance(obj, (_ArrayStandIn, _DtypeStandIn, _Guarded)):
        raise pickle.UnpicklingError("a numpy array, dtype or allowed global where plain data belongs")


def load(file: IO[bytes], encoding: str = "bytes") -> Any:
    """Unpickle ``file`` without running code; numpy arrays come back as uint8/bool ndarrays.

    ``encoding='bytes'`` keeps Python 2 ``str`` objects as bytes (raw image data must stay raw).
    """
    return _resolve(_RestrictedUnpickler(file, encoding=encoding).load(), set())
