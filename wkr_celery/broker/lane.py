"""A connection kept for one hot path, so its commands skip redis-py's per-command overhead.

redis-py 8 spends about 20 µs of CPU per command around the socket: taking a connection from
the pool (with a poll that it holds no stale reply), its connection-count and observability
bookkeeping, the retry wrapper, and giving the connection back. On the 2-vCPU VM an ``LPUSH``
costs 65 µs of CPU from ``Redis.lpush`` against 45 µs sent and read on a connection already in
hand. A lone request pays that overhead on each of its Redis calls on the latency path (the
client's publish, the worker's ``BLMOVE`` and its store), so those calls go through a
:class:`Lane`: one connection of the client's own pool, kept, with the same parser (so the same
errors, :class:`~wkr_celery.connections.RedisRefused` included), the same timeouts and health
checks, and the same password and Sentinel lookup when it reconnects.

Whatever goes wrong on the kept connection is left to redis-py: the connection is dropped and
the command runs once more through the client's usual path, with its retry rules. A thread that
finds the lane in use by another takes that path too, so sharing a lane is never wrong, only
slower.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from ..connections import RedisRefused
from ..processes import forks

__all__ = ["Lane"]


class Lane:
    """One connection of ``client``'s pool, kept for the commands of one hot path."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._connection: Any = None
        self._forks = forks()

    def execute(self, *args: Any) -> Any:
        """Run one command (no response callback: its raw reply) on the kept connection."""
        if not self._lock.acquire(blocking=False):
            return self.client.execute_command(*args)
        try:
            try:
                connection = self._kept()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                connection = None  # none can be made now: redis-py's path retries that
            if connection is not None:
                try:
                    connection.send_command(*args)
                    return connection.read_response()
                except (redis.ResponseError, RedisRefused):
                    raise  # an answer (an error reply, a refusal), not a lost connection
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    connection.disconnect()  # made again on next use; redis-py's path retries
                except BaseException:
                    connection.disconnect()  # interrupted mid-reply: never reuse it
                    raise
        finally:
            self._lock.release()
        return self.client.execute_command(*args)

    def run_script(self, script: Script, keys: Sequence[Any], args: Sequence[Any]) -> Any:
        """``EVALSHA`` of ``script``, loading it first if the server lost it (a restart, a
        ``SCRIPT FLUSH``), as ``Script.__call__`` does."""
        try:
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)
        except NoScriptError:
            script.sha = self.client.script_load(script.script)
            return self.execute("EVALSHA", script.sha, len(keys), *keys, *args)

    @contextmanager
    def held(self) -> Iterator[Any]:
        """The kept connection, for a caller that sends and reads on it by itself; ``None``
        while another thread has it or none can be made. A caller that leaves a reply unread
        must disconnect it."""
        if not self._lock.acquire(blocking=False):
            yield None
            return
        try:
            try:
                connection = self._kept()
            except (redis.RedisError, OSError):
                connection = None  # no connection can be made now
            yield connection
        finally:
            self._lock.release()

    def _kept(self) -> Any:
        if self._forks != forks():  # a forked child: the socket is the parent's
            self._connection, self._forks = None, forks()
        if self._connection is None:
            self._connection = self.client.connection_pool.get_connection()
        return self._connection
