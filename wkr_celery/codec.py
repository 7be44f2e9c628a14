"""Payload encoding: msgpack with numpy arrays (msgpack-numpy), registered as a kombu serializer.

One encoding serves both protocols: ``npy`` payloads are arrays, ``obj`` payloads are any mix of
dicts, lists, str, numbers, bytes and arrays. Arrays travel as raw buffers and decode as
zero-copy, read-only views.

Decoding reads bytes from strangers (the queue, the REST API, a result Redis), so :func:`loads`
is the one decoder every reader uses, and it never hands back anything unsafe. msgpack-numpy's
own decoder builds ``np.ndarray(buffer=..., dtype=<whatever the map says>)``: an object dtype
(``"|O"``, with or without its ``kind`` key, or as a field of a structured dtype) makes an
array of raw pointers read from the wire, and touching it crashes the process. Here an array's
dtype must be one of a whitelist (bool, integers, float16/32/64, complex64/128, fixed-size bytes
and str), spelled as a plain type string; its shape must describe exactly the bytes sent; str
arrays must hold valid code points. Non-native byte order is swapped to native. Anything else is
a :class:`~wkr_celery.errors.DecodeError` naming the problem: no other exception leaves
:func:`loads`. Object and structured arrays are refused even with ``-allow_pickle``, which only
admits Celery's pickle content type (see :mod:`wkr_celery.messages`).
"""

from __future__ import annotations

import functools
import re
from typing import Any

import msgpack
import msgpack_numpy
import numpy as np

from .errors import DecodeError

__all__ = ["CONTENT_TYPE", "SERIALIZER", "dumps", "loads", "register_serializer", "safe_dtype"]

SERIALIZER = "wkr-msgpack"
CONTENT_TYPE = "application/x-wkr-msgpack"

#: ``<byte order><kind><size>``: the only dtype spelling accepted from the wire.
_TYPE_TEXT = re.compile(r"([<>|=])([biufcSU])([0-9]{1,10})")
#: Item sizes numpy gives each numeric kind on every platform (no float128: it is not portable).
_NUMERIC_SIZES = {"b": (1,), "i": (1, 2, 4, 8), "u": (1, 2, 4, 8), "f": (2, 4, 8),
                  "c": (8, 16)}
_MAX_NDIM = 32
_MAX_CODE_POINT = 0x10FFFF
_MAX_COMPLEX_TEXT = 200


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, (np.ndarray, np.generic)):
        _decodable(obj.dtype)
    return msgpack_numpy.encode(obj)


def _decodable(dtype: np.dtype[Any]) -> None:
    """``TypeError`` for a dtype :func:`loads` would refuse: what is written must be readable,
    or a result is stored that its caller can never read (float128 once was)."""
    if dtype in _DECODABLE:  # every array a client or worker writes passes here
        return
    if dtype.kind in "OV":
        what = "object" if dtype.kind == "O" else "structured"
        raise TypeError(
            f"numpy arrays of dtype {what} ({dtype}) are not accepted by the decoder; "
            "convert to a list or to a plain numeric, bytes or str dtype")
    try:
        safe_dtype(dtype.str)
    except DecodeError as exc:
        raise TypeError(f"numpy values of dtype {dtype} cannot be sent: {exc}") from None
    if len(_DECODABLE) < 256:  # a service writes a handful of dtypes (str and bytes sizes vary)
        _DECODABLE.add(dtype)


_DECODABLE: set[np.dtype[Any]] = set()


def safe_dtype(spelling: Any) -> np.dtype[Any]:
    """The dtype a wire type string names, if it is on the whitelist; else ``DecodeError``.

    Only ``<byte order><kind><size>`` strings are read (``"<f4"``, ``"|b1"``, ``">U12"``),
    never msgpack-numpy's structured descriptions, so no object field can hide inside.
    """
    if isinstance(spelling, bytes):
        spelling = spelling.decode("ascii", "replace")
    if not isinstance(spelling, str):
        raise DecodeError(f"array dtype {spelling!r} is not accepted; arrays must be bool, "
                          "int, uint, float, complex, bytes (S) or str (U)")
    return _checked_dtype(spelling)


@functools.lru_cache(maxsize=256)  # a service sees a handful of spellings; refusals not cached
def _checked_dtype(spelling: str) -> np.dtype[Any]:
    match = _TYPE_TEXT.fullmatch(spelling)
    if match is None:
        raise DecodeError(f"array dtype {spelling!r} is not accepted; arrays must be bool, "
                          "int, uint, float, complex, bytes (S) or str (U)")
    kind, size = match.group(2), int(match.group(3))
    if kind in "SU":
        if size < 1:
            raise DecodeError(f"array dtype {spelling!r} has items of size 0")
    elif size not in _NUMERIC_SIZES[kind]:
        raise DecodeError(f"array dtype {spelling!r} is not accepted; {kind} items come in "
                          f"sizes {_NUMERIC_SIZES[kind]}")
    dtype = np.dtype(spelling)
    if dtype.kind != kind or dtype.hasobject or dtype.fields is not None:  # pragma: no cover
        raise DecodeError(f"array dtype {spelling!r} is not accepted")
    return dtype


def _shape_of(shape: Any) -> tuple[int, ...]:
    if not isinstance(shape, (list, tuple)) or len(shape) > _MAX_NDIM:
        raise DecodeError(f"array shape {shape!r} must be a list of at most {_MAX_NDIM} sizes")
    if not all(type(d) is int and 0 <= d < 2**62 for d in shape):
        raise DecodeError(f"array shape {list(shape)!r} must hold sizes from 0 up")
    return tuple(shape)


def _native(array: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The array in this machine's byte order (a swapped copy when it is not), read-only."""
    if array.dtype.isnative:
        return array
    swapped = array.byteswap().view(array.dtype.newbyteorder("="))
    swapped.flags.writeable = False
    return swapped


def _check_text(array: np.ndarray[Any, Any]) -> None:
    """str arrays hold UCS-4 code points; one past U+10FFFF makes numpy fail on every read."""
    if array.dtype.kind == "U" and array.size:
        codes = array.view(np.uint32)
        if int(codes.max()) > _MAX_CODE_POINT:
            raise DecodeError("str array holds a code point past U+10FFFF")


def _array(obj: dict[Any, Any]) -> Any:
    """An array (``nd: True``) or numpy scalar (``nd: False``) built from a checked map."""
    kind = obj.get(b"kind", b"")
    if kind not in (b"", ""):
        what = {b"O": "object arrays (pickled)", b"V": "structured arrays"}.get(
            kind if isinstance(kind, bytes) else b"", f"array kind {kind!r}")
        raise DecodeError(f"{what} are not accepted; send a plain numeric, bytes or str array")
    data = obj.get(b"data")
    if not isinstance(data, bytes):
        raise DecodeError("array map has no data bytes")
    dtype = safe_dtype(obj.get(b"type"))
    if obj[b"nd"] is True:
        shape = _shape_of(obj.get(b"shape"))
        count = 1
        for size in shape:
            count *= size
    elif obj[b"nd"] is False:
        shape, count = (), 1
    else:
        raise DecodeError(f"array map has nd={obj[b'nd']!r}; it must be true or false")
    if count * dtype.itemsize != len(data):
        raise DecodeError(f"array of shape {shape} and dtype {dtype.str} needs "
                          f"{count * dtype.itemsize} bytes, the message holds {len(data)}")
    try:
        array = _native(np.frombuffer(data, dtype=dtype).reshape(shape))
    except ValueError as exc:  # e.g. (0, 2**61, 2**61): no bytes, yet numpy cannot index it
        raise DecodeError(f"array of shape {shape} cannot be built: {exc}") from None
    _check_text(array)
    return array if obj[b"nd"] is True else array[()]


def _complex(obj: dict[Any, Any]) -> Any:
    text = obj[b"data"]
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    if not isinstance(text, str) or len(text) > _MAX_COMPLEX_TEXT:
        raise DecodeError("complex number map must hold its value as short text")
    try:
        return complex(text)
    except ValueError:
        raise DecodeError(f"complex number text {text[:40]!r} is not a number") from None


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if b"nd" in obj:
        return _array(obj)
    if b"complex" in obj and b"data" in obj:
        return _complex(obj)
    return obj


def _refuse_ext(code: int, data: bytes) -> Any:
    raise DecodeError(f"msgpack extension type {code} is not accepted")


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; raises ``TypeError`` naming what cannot be encoded."""
    return msgpack.packb(obj, default=_encode_hook, use_bin_type=True)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode bytes from :func:`dumps`; anything malformed or unsafe is ``DecodeError``."""
    try:
        return msgpack.unpackb(data, object_hook=_decode_hook, ext_hook=_refuse_ext, raw=False,
                               strict_map_key=False)
    except DecodeError:
        raise
    except Exception as exc:  # msgpack's, numpy's or a hashing error: all mean "malformed"
        raise DecodeError(f"malformed msgpack ({type(exc).__name__}: {exc})") from None


def register_serializer() -> None:
    """Make the encoding known to kombu, so Celery tasks and results can use it by name."""
    from kombu.serialization import register  # only the Celery side needs kombu

    register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")
