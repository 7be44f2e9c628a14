"""Hand-written Redis list loops, the reference points: no framework, no reliability.

Client: ``LPUSH bench:naive:req <client id><request id><float32 bytes>``. Worker: ``RPOP`` up to a
batch of requests (``BRPOP`` one when none wait), run the model on them at once, ``LPUSH``
``<request id><float32 bytes>`` replies onto each client's reply list. Run a worker with
``python -m benchmarks.naive REDIS_URL WORKLOAD [BATCH_SIZE]``.

Two clients share those workers. :class:`NaiveClient` pushes each request as it is submitted
(one round trip per request). :class:`CoalescingClient` is the limit a hand-written client can
reach: it sends nothing until it must wait for an answer, then gathers every request submitted
since into one ``LPUSH`` (a *pump*), pipelined with an ``RPOP`` of up to 256 waiting replies,
and blocks only when none wait.
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


def serve(url: str, workload: str, batch_size: int = 32) -> None:
    """Answer requests until SIGTERM (checked at least once a second).

    Take up to ``batch_size`` waiting requests with one ``RPOP``; when none wait, block on
    ``BRPOP`` and run the one that wakes us at once (no second round trip on the idle path).
    One model call per batch, then one ``LPUSH`` per client with all of its replies.
    """
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
        batch: list[bytes] = r.rpop(REQUESTS, batch_size) or []  # type: ignore[assignment]
        if not batch:
            item = r.brpop([REQUESTS], timeout=1)
            if item is None:
                continue
            batch = [item[1]]  # type: ignore[list-item]  # no decode_responses
        head = _CLIENT_LEN + _ID.size
        x = np.stack([np.frombuffer(data, dtype=np.float32, offset=head) for data in batch])
        replies: dict[bytes, list[bytes]] = {}
        for data, out in zip(batch, model(x)):
            replies.setdefault(data[:_CLIENT_LEN], []).append(data[_CLIENT_LEN:head]
                                                              + out.tobytes())
        if len(replies) == 1:
            (client, items), = replies.items()
            r.lpush(reply_list(client), *items)
        else:
            pipe = r.pipeline(transaction=False)
            for client, items in replies.items():
                pipe.lpush(reply_list(client), *items)
            pipe.execute()


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


class CoalescingClient(NaiveClient):
    """The naive client with its submits gathered: one ``LPUSH`` per pump, replies in bulk."""

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self._unsent: list[bytes] = []

    def submit(self, x: np.ndarray) -> int:
        self._next += 1
        self._unsent.append(self.client_id + _ID.pack(self._next) + x.tobytes())
        return self._next

    def result(self, rid: int, timeout: float) -> Any:
        """Answers already taken cost no round trip. Otherwise one pipelined round trip sends
        every unsent request (one ``LPUSH``) and takes up to 256 waiting replies (``RPOP``);
        only when none wait does it block (``BRPOP``)."""
        deadline = time.monotonic() + timeout
        while rid not in self._arrived:
            pipe = self.redis.pipeline(transaction=False)
            if self._unsent:
                pipe.lpush(REQUESTS, *self._unsent)  # oldest first: the worker takes it first
                self._unsent.clear()
            pipe.rpop(self.reply, 256)
            replies: list[bytes] = pipe.execute()[-1] or []
            if not replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no reply to coalesced request {rid} in {timeout}s")
                item = self.redis.brpop([self.reply], timeout=max(1, int(min(left, 5))))
                replies = [item[1]] if item is not None else []  # type: ignore[list-item]
            for data in replies:
                (got,) = _ID.unpack(data[:_ID.size])
                self._arrived[got] = np.frombuffer(data, dtype=np.float32, offset=_ID.size)
        return self._arrived.pop(rid)


if __name__ == "__main__":
    serve(sys.argv[1], sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 32)
