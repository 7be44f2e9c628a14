"""Request bodies in, responses out, in JSON or msgpack-numpy: the request's own encoding.

A body is read incrementally and refused (413) as soon as it passes ``-http_max_body``, whether
or not it announced a ``Content-Length``. JSON cannot carry arrays or bytes, so results are
made plain here: arrays become nested lists, bytes become base64 text.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any

import numpy as np
from starlette.requests import Request
from starlette.responses import Response

from .. import codec

__all__ = ["MSGPACK", "is_msgpack", "wants_msgpack", "read_body", "parse_body", "render", "plain"]

MSGPACK = "application/msgpack"
_MSGPACK_TYPES = (MSGPACK, "application/x-msgpack", "application/vnd.msgpack")


def is_msgpack(request: Request) -> bool:
    """The body is msgpack-numpy (``Content-Type: application/msgpack``)."""
    return request.headers.get("content-type", "").split(";")[0].strip() in _MSGPACK_TYPES


def wants_msgpack(request: Request) -> bool:
    """Answer in msgpack: the request was msgpack, or (for GETs) ``Accept`` asks for it."""
    return is_msgpack(request) or any(t in request.headers.get("accept", "")
                                      for t in _MSGPACK_TYPES)


async def read_body(request: Request, limit: int) -> bytes:
    """The whole body, or ``ApiError(413)`` as soon as it is known to be over ``limit``."""
    from .problems import ApiError

    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "InvalidRequest",
                           f"Content-Length {declared!r} is not a number") from None
        if size > limit:
            raise ApiError(413, "PayloadTooLarge", f"body of {size} bytes is over this API's "
                           f"limit of {limit} bytes (-http_max_body)")
    chunks: list[bytes] = []
    total = 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise ApiError(413, "PayloadTooLarge", f"body passed {limit} bytes, this API's "
                           "limit (-http_max_body)")
        chunks.append(chunk)
    return b"".join(chunks)


def parse_body(data: bytes, msgpack: bool) -> Any:
    """Decode a body; a malformed one is ``ApiError(400)`` naming the encoding."""
    from .problems import ApiError

    if not data:
        raise ApiError(400, "InvalidRequest", "the request has no body; send "
                       '{"id": ..., "data": ...} as JSON or msgpack')
    try:
        return codec.loads(data) if msgpack else json.loads(data)
    except Exception as exc:  # any decoder failure is the caller's body
        kind = "msgpack" if msgpack else "JSON"
        raise ApiError(400, "InvalidRequest", f"body is not valid {kind}: {exc}") from None


def plain(value: Any) -> Any:
    """``value`` with arrays, numpy scalars and bytes turned into JSON types."""
    if isinstance(value, np.ndarray):
        if value.dtype.kind == "f" and not np.isfinite(value).all():
            return plain(value.tolist())  # NaN and infinities become null
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def render(content: Any, status: int = 200, *, msgpack: bool = False,
           headers: dict[str, str] | None = None) -> Response:
    if msgpack:
        return Response(codec.dumps(content), status, headers=headers, media_type=MSGPACK)
    body = json.dumps(plain(content), allow_nan=False, separators=(",", ":"))
    return Response(body, status, headers=headers, media_type="application/json")
