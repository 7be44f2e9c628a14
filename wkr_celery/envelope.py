"""Our own clients' request envelope: one msgpack array, no JSON, no base64.

Celery's message on a Redis list is kombu's envelope: a JSON object of some 30 headers around
the base64 of the body. Building and reading it was the largest CPU cost of a request on both
sides (docs/performance.md), and a client of ours needs none of those headers. So
:class:`~wkr_celery.client.WKRClient`, :class:`~wkr_celery.client.AsyncWKRClient` and the REST
gateway send this instead, on the same queue lists::

    [1, task_id, client_id or nil, deadline or nil, priority, body]

a msgpack array of six: the format version, the Celery task id (results are still stored at
``celery-task-meta-<task id>``), the client whose reply list gets the answer (nil: publish the
result as Celery's backend does), the deadline in epoch seconds on the broker Redis's clock
(:mod:`.clock`), the priority step (0, 3 or 6, kombu's; informative, the list it is on decides
the order), and ``body``: the protocol-2 body ``[[input], {}, embed]`` encoded by
:func:`wkr_celery.codec.dumps`, as msgpack ``bin`` (the same bytes kombu's envelope carries in
base64).

A worker tells the two formats apart by the first byte: a msgpack array of six is ``0x96``,
and a kombu envelope is a JSON object, ``{``. The envelope is decoded with
:func:`codec.loads_record` (a flat record: no list or map inside it is built), its body with
:func:`codec.loads`, the decoder every reader uses.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import msgpack

from . import codec
from .errors import DecodeError

__all__ = ["FIRST_BYTE", "VERSION", "Compact", "build", "is_compact", "read"]

VERSION = 1
#: msgpack's "fixarray of 6": the first byte of every compact envelope.
FIRST_BYTE = 0x96
_FIELDS = 6
_MAX_TASK_ID = 255


def build(task_id: str, body: bytes, *, client_id: str | None, deadline: float | None,
          priority: int) -> bytes:
    """The compact envelope around ``body`` (``messages.encode_body`` of one input)."""
    return msgpack.packb([VERSION, task_id, client_id, deadline, int(priority), body],
                         use_bin_type=True)


def is_compact(raw: bytes | str) -> bool:
    """Whether ``raw`` is a compact envelope rather than kombu's JSON (judged by one byte)."""
    return isinstance(raw, bytes) and raw[:1] == b"\x96"


class Compact(NamedTuple):
    """A compact envelope's fields; ``problem`` says why it cannot be served (else ``None``).

    ``task_id`` is kept whenever it could be read, so a bad message still gets a failure
    answer its caller can receive.
    """

    task_id: str | None
    client_id: str | None
    deadline: float | None
    priority: int
    body: bytes
    problem: str | None


def read(raw: bytes) -> Compact:
    """The fields of a compact envelope; never raises (a bad one comes back with ``problem``)."""
    try:
        fields = codec.loads_record(raw, _FIELDS)
    except DecodeError as exc:
        return _bad(None, f"compact envelope is not msgpack: {exc}")
    if len(fields) != _FIELDS:
        return _bad(None, f"compact envelope must be an array of {_FIELDS} fields")
    version, task_id, client_id, deadline, priority, body = fields
    if not isinstance(task_id, str) or not 0 < len(task_id) <= _MAX_TASK_ID:
        return _bad(None, "compact envelope has no task id (field 2 must be a short string)")
    problem = _problem(version, client_id, deadline, priority, body)
    if problem is not None:
        return _bad(task_id, problem)
    return Compact(task_id, client_id, None if deadline is None else float(deadline),
                   priority, body, None)


def _problem(version: Any, client_id: Any, deadline: Any, priority: Any, body: Any
             ) -> str | None:
    if version != VERSION or type(version) is not int:
        return f"compact envelope version {version!r} is not {VERSION}"
    if client_id is not None and not isinstance(client_id, str):
        return "compact envelope's client id must be a string or nil"
    if deadline is not None and (type(deadline) not in (int, float) or deadline != deadline):
        return "compact envelope's deadline must be a number (epoch seconds) or nil"
    if type(priority) is not int:
        return "compact envelope's priority must be an integer"
    if not isinstance(body, bytes):
        return "compact envelope's body must be msgpack bin"
    return None


def _bad(task_id: str | None, problem: str) -> Compact:
    return Compact(task_id, None, None, 0, b"", problem)
