"""A connection kept for one hot path, so its commands skip redis-py's per-command overhead.

redis-py 8 spends about 30 µs of CPU per command around the socket: taking a connection from
the pool (with a poll that it holds no stale reply), its connection-count and observability
bookkeeping, the retry wrapper, giving the connection back, and its send and read layers. On
the 2-vCPU VM an ``LPUSH`` costs 62-67 µs of CPU from ``Redis.lpush``, 40-50 µs sent with
``send_command`` and read with ``read_response`` on a connection already in hand, and 32 µs
through :func:`_round_trip`, which packs with hiredis and reads into the parser's own reader.
A lone request pays that overhead on each of its Redis calls on the latency path (the client's
publish and its read of the answer, the worker's ``BLMOVE`` and its store), so those calls go
through a :class:`Lane`: one connection of the client's own pool, kept, with the same parser
(so the same errors, :class:`~wkr_celery.connections.RedisRefused` included), the same
timeouts and health checks, and the same password and Sentinel lookup when it reconnects.

Whatever goes wrong on the kept connection is left to redis-py: the connection is dropped and
the command runs once more through the client's usual path, with its retry rules. An error
reply is raised; a refusal (:class:`~wkr_celery.connections.RedisRefused`) is raised and, as
redis-py does, drops the connection, so a Sentinel client's next call finds the new master. A
thread that finds the lane in use by another takes redis-py's path too, so sharing a lane is
never wrong, only slower.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import hiredis
import redis
from redis.commands.core import Script
from redis.exceptions import NoScriptError

from ..connections import REDIS_ERRORS, RedisRefused
from ..processes import forks

__all__ = ["Lane"]

try:  # the marker redis-py's hiredis parser gives its reader for "no whole reply yet"
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # another redis-py: its own read path is used
    _NOT_ENOUGH_DATA = None


class Lane:
    """One connection of ``client``'s pool, kept for the commands of one hot path."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self._lock = threading.Lock()
        self._connection: Any = None
        self._forks = forks()
        self._buffer = bytearray(65536)  # replies are read into it; one user at a time

    def execute(self, *args: Any) -> Any:
        """Run one command (no response callback: its raw reply) on the kept connection."""
        connection = self._take()
        if connection is not None:
            try:
                return _round_trip(connection, args, self._buffer)
            except redis.ResponseError:
                raise  # an answer, read whole: the connection stays
            except BaseException as exc:
                # Lost, interrupted mid-reply, or refused: dropped, as redis-py drops it (after
                # a refusal the next call connects again, to the master Sentinel names now).
                connection.disconnect()
                if isinstance(exc, RedisRefused) or not isinstance(exc, REDIS_ERRORS):
                    raise
            finally:
                self._lock.release()
        return self.client.execute_command(*args)  # redis-py's path, with its retry rules

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
        connection = self._take()
        try:
            yield connection
        finally:
            if connection is not None:
                self._lock.release()

    def _take(self) -> Any:
        """The kept connection, made if need be, with the lane taken (release it); ``None``,
        not taken, while another thread has it or no connection can be made."""
        if not self._lock.acquire(blocking=False):
            return None
        try:
            if self._forks != forks():  # a forked child: the socket is the parent's
                self._connection, self._forks = None, forks()
            if self._connection is None:
                self._connection = self.client.connection_pool.get_connection()
            return self._connection
        except (redis.RedisError, OSError):
            self._lock.release()
            return None


def _round_trip(connection: Any, args: tuple[Any, ...], buffer: bytearray) -> Any:
    """Send ``args`` and read the reply on ``connection``, raising an error reply.

    With redis-py's hiredis parser (the one we install) this packs with ``hiredis`` and reads
    into the parser's own reader straight from the socket, as redis-py does, without the layers
    around it (10 µs of CPU per call on the 2-vCPU VM); otherwise through redis-py's
    ``send_command`` and ``read_response``. Either way the parser's reader holds any partial
    reply, so the two can follow each other on one connection."""
    reader: Any = getattr(connection._parser, "_reader", None)
    packed = _packed(args) if isinstance(reader, hiredis.Reader) else None
    if packed is None:
        connection.send_command(*args)
        return connection.read_response()
    connection.check_health()  # a PING first after 30 s unused, as redis-py does
    sock = connection._sock
    sock.sendall(packed)
    while (reply := reader.gets()) is _NOT_ENOUGH_DATA:
        read = sock.recv_into(buffer)
        if not read:
            raise redis.ConnectionError("Redis closed the connection")
        reader.feed(buffer, 0, read)
    if connection.health_check_interval:
        connection.next_health_check = time.monotonic() + connection.health_check_interval
    if isinstance(reply, Exception):  # hiredis returns error replies (parse_error made them)
        raise reply
    return reply


def _packed(args: tuple[Any, ...]) -> bytes | None:
    """``args`` as one command in Redis's protocol, by hiredis; ``None`` where this redis-py's
    reader has no marker for a partial reply we know, or hiredis cannot pack a type (redis-py's
    encoder may)."""
    if _NOT_ENOUGH_DATA is None:
        return None
    try:
        return hiredis.pack_command(args)
    except TypeError:
        return None
