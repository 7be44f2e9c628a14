"""Payload encoding: msgpack with numpy arrays (msgpack-numpy), registered as a kombu serializer.

One encoding serves both protocols: ``npy`` payloads are arrays, ``obj`` payloads are any mix of
dicts, lists, str, numbers, bytes and arrays. Arrays travel as raw buffers and decode as
zero-copy, read-only views. Object arrays would need pickle, which runs code from the wire, so
they are refused unless the service enables pickle.
"""

from __future__ import annotations

from typing import Any

import msgpack
import msgpack_numpy
import numpy as np
from kombu.serialization import register

__all__ = ["CONTENT_TYPE", "SERIALIZER", "dumps", "loads", "register_serializer"]

SERIALIZER = "wkr-msgpack"
CONTENT_TYPE = "application/x-wkr-msgpack"


def _encode_hook(obj: Any) -> Any:
    if isinstance(obj, np.ndarray) and obj.dtype.kind == "O":
        raise TypeError(
            "numpy arrays of dtype object need pickle; convert to a list or a numeric dtype"
        )
    return msgpack_numpy.encode(obj)


def _decode_hook(obj: dict[Any, Any]) -> Any:
    if obj.get(b"nd") is True and obj.get(b"kind") == b"O":
        raise ValueError("payload holds a pickled numpy object array, and pickle is disabled")
    return msgpack_numpy.decode(obj)


def dumps(obj: Any) -> bytes:
    """Encode ``obj``; raises ``TypeError`` naming what cannot be encoded."""
    return msgpack.packb(obj, default=_encode_hook, use_bin_type=True)


def loads(data: bytes | bytearray | memoryview) -> Any:
    """Decode bytes from :func:`dumps`; never unpickles."""
    return msgpack.unpackb(data, object_hook=_decode_hook, raw=False, strict_map_key=False)


def register_serializer() -> None:
    """Make the encoding known to kombu, so Celery tasks and results can use it by name."""
    register(SERIALIZER, dumps, loads, content_type=CONTENT_TYPE, content_encoding="binary")
