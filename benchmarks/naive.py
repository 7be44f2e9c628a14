"""A hand-written Redis list loop, the reference point: no framework, no batching.

Client: ``LPUSH bench:naive:req <client id><request id><float32 bytes>``. Worker: ``BRPOP`` one
request, run the model on it, ``LPUSH`` ``<request id><float32 bytes>`` onto the client's reply
list. Run a worker with ``python -m benchmarks.naive REDIS_URL WORKLOAD``.
"""

from __future__ import annotations

import os
import signal
import struct
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import redis

REQUESTS = "bench:naive:req"
_ID = struct.Struct("<Q")
_CLIENT_LEN = 32


def reply_list(client_id: bytes) -> bytes:
    return b"bench:naive:reply:" + client_id


def serve(url: str, workload: str) -> None:
    """Answer requests until SIGTERM (checked at least once a second)."""
    from .model import Model

    model = Model(workload)
    stop = {"now": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(now=True))
    signal.signal(signal.SIGINT, lambda *_: stop.update(now=True))
    r = redis.Redis.from_url(url, socket_timeout=5)
    stats_dir = os.environ.get("BENCH_STATS_DIR")
    if stats_dir:
        (Path(stats_dir) / f"ready-{os.getpid()}").touch()
    while not stop["now"]:
        item = r.brpop([REQUESTS], timeout=1)
        if item is None:
            continue
        data: bytes = item[1]  # type: ignore[assignment]  # no decode_responses
        client, rid = data[:_CLIENT_LEN], data[_CLIENT_LEN:_CLIENT_LEN + _ID.size]
        x = np.frombuffer(data, dtype=np.float32, offset=_CLIENT_LEN + _ID.size)
        r.lpush(reply_list(client), rid + model(x).tobytes())


class NaiveClient:
    """``submit(x)`` → request id; ``result(id, timeout)`` pops replies until that one comes."""

    def __init__(self, url: str) -> None:
        self.redis = redis.Redis.from_url(url, socket_timeout=30)
        self.client_id = uuid.uuid4().hex.encode()
        self.reply = reply_list(self.client_id)
        self._next = 0
        self._arrived: dict[int, np.ndarray] = {}

    def submit(self, x: np.ndarray) -> int:
        self._next += 1
        self.redis.lpush(REQUESTS, self.client_id + _ID.pack(self._next) + x.tobytes())
        return self._next

    def result(self, rid: int, timeout: float) -> Any:
        deadline = time.monotonic() + timeout
        while rid not in self._arrived:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"no reply to naive request {rid} in {timeout}s")
            item = self.redis.brpop([self.reply], timeout=max(1, int(min(left, 5))))
            if item is not None:
                data: bytes = item[1]  # type: ignore[assignment]  # no decode_responses
                (got,) = _ID.unpack(data[:_ID.size])
                self._arrived[got] = np.frombuffer(data, dtype=np.float32, offset=_ID.size)
        return self._arrived.pop(rid)

    def close(self) -> None:
        self.redis.delete(self.reply)
        self.redis.close()


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2])
