"""``RedisHandler``: a first-in, first-out job list on Redis, for decentralize processing units.

Jobs are pushed onto the left of the list (``LPUSH``) and popped from the right (``RPOP`` /
``BRPOP``), so the oldest job is served first and any other producer that ``LPUSH``es the same
encoding joins the same queue. Values are JSON by default; ``serializer="msgpack"`` uses
wkr-celery's msgpack-numpy codec, so numpy arrays travel as raw buffers.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from typing import Any, cast

import redis

from .. import codec
from ..connections import LocalPassword
from ..keys import job_queue

__all__ = ["RedisHandler", "SERIALIZERS"]

#: ``serializer=`` name -> (dumps, loads).
SERIALIZERS: dict[str, tuple[Callable[[Any], bytes | str], Callable[[bytes], Any]]] = {
    "json": (lambda value: json.dumps(value, separators=(",", ":")), json.loads),
    "msgpack": (codec.dumps, codec.loads),
}

# A blocking pop is split into server-side waits of at most this many seconds, so the socket
# timeout (this plus a margin) can still tell a dead connection from a long wait.
_BLOCK_SLICE = 5.0


class RedisHandler:
    """A job queue named ``queue_key`` on the Redis at ``ip:port`` (database ``db``)."""

    def __init__(
        self,
        queue_key: str,
        ip: str = "127.0.0.1",
        port: int = 6379,
        db: int = 0,
        password: str | None = None,
        *,
        serializer: str = "json",
        socket_timeout: float = _BLOCK_SLICE + 10.0,
    ) -> None:
        if serializer not in SERIALIZERS:
            raise ValueError(f"serializer {serializer!r} is not one of {sorted(SERIALIZERS)}")
        self.queue_key = job_queue(queue_key)
        self.serializer = serializer
        self._dumps, self._loads = SERIALIZERS[serializer]
        self._redis = redis.Redis(
            host=ip, port=port, db=db, password=password,
            credential_provider=None if password else LocalPassword(ip, port),
            socket_connect_timeout=5.0, socket_timeout=socket_timeout,
            socket_keepalive=True, health_check_interval=30,
        )

    def push(self, value: Any) -> int:
        """Append one job at the back of the queue; returns the queue's length after it."""
        return int(self._redis.lpush(self.queue_key, self._dumps(value)))

    def push_many(self, values: Iterable[Any]) -> int:
        """Append jobs in order (the first is served first) in one round trip."""
        encoded = [self._dumps(value) for value in values]
        if not encoded:
            return self.size()
        return int(self._redis.lpush(self.queue_key, *encoded))

    def pop(self, timeout: float | None = None) -> Any | None:
        """The oldest job, or ``None`` when the queue is empty.

        ``timeout=None`` returns at once; ``timeout=t`` waits up to ``t`` seconds for a job;
        ``timeout=0`` waits until one arrives.
        """
        if timeout is None:
            raw = self._redis.rpop(self.queue_key)
            return None if raw is None else self._loads(cast(bytes, raw))
        if timeout < 0:
            raise ValueError(f"timeout must not be negative, got {timeout}")
        deadline = None if timeout == 0 else time.monotonic() + timeout
        while True:
            wait = _BLOCK_SLICE if deadline is None else min(
                _BLOCK_SLICE, deadline - time.monotonic())
            if wait <= 0:
                return None
            # BRPOP takes fractions of a second since Redis 6; under 10 ms it would mean "forever".
            item = self._redis.brpop([self.queue_key], timeout=max(wait, 0.01))
            if item is not None:
                return self._loads(cast(bytes, item[1]))

    def size(self) -> int:
        """Jobs waiting in the queue."""
        return int(self._redis.llen(self.queue_key))

    def __len__(self) -> int:
        return self.size()

    def close(self) -> None:
        """Release the connection pool; the queue and its jobs stay in Redis."""
        self._redis.close()
        self._redis.connection_pool.disconnect()

    def __enter__(self) -> RedisHandler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
