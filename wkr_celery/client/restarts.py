"""How a client sees one Redis server: reachable or not (since when), and which run of it.

A client talks to two Redis servers that fail apart: the broker (requests) and the result
Redis (answers). Each gets its own :class:`RedisWatch`, so an outage of one is noticed, logged
and handled without stopping the client's use of the other.

A Redis restarted without an append-only file comes back with none of the queued requests or
stored replies it held, and nothing on the wire says so: connections simply reconnect. The
server's ``run_id`` changes on every start, so a watch that remembers it can tell.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Mapping
from typing import Any

import redis

from ..connections import REDIS_ERRORS, RedisRefused, redacted

__all__ = ["RedisState", "RedisWatch"]

log = logging.getLogger("wkr_celery.client")


class RedisState:
    """One Redis server as a client sees it, whichever way it asks (:class:`RedisWatch` here,
    :class:`~.async_restarts.AsyncRedisWatch` on an event loop).

    ``role`` names it in messages ("broker", "result", or "broker and result" when one server
    is both). An outage is logged once when it starts and once when it ends, however many
    calls fail in between.
    """

    def __init__(self, role: str, url: str) -> None:
        self.role = role
        self.url = url
        self.restarts = 0  # run_id changes seen, with or without persistence
        self.run_id: str | None = None
        #: ``time.monotonic()`` when the current outage began; ``None`` while reachable.
        self.down_since: float | None = None
        #: Bumped on every recovery and every restart: the client re-reads stored answers then.
        self.changes = 0
        self._lock = threading.Lock()
        self._refusing = False  # the server refuses writes (see failed)
        self._blind = False  # the server refuses INFO: restarts cannot be seen

    @property
    def name(self) -> str:
        return f"{self.role} Redis {redacted(self.url)}"

    @property
    def serves_results(self) -> bool:
        return "result" in self.role

    @property
    def serves_requests(self) -> bool:
        return "broker" in self.role

    def failed(self, exc: BaseException) -> None:
        """A call to this Redis failed: the first failure of an outage is logged.

        A refusal (:class:`~wkr_celery.connections.RedisRefused`) is no outage: the server is
        up with its data, so nothing it holds is in doubt and no verdict follows; it is said
        once, until a write goes through again (:meth:`reached`)."""
        if isinstance(exc, RedisRefused):
            with self._lock:
                if self._refusing:
                    return
                self._refusing = True
            log.warning("%s: %s; retrying quietly until it takes them", self.name, exc)
            return
        with self._lock:
            if self.down_since is not None:
                return
            self.down_since = time.monotonic()
        log.warning("%s is unreachable (%s); retrying quietly until it is back",
                    self.name, exc)

    def reached(self) -> None:
        """A call that writes (a pop of the reply list) succeeded: the end of an outage or of
        a refusal is logged."""
        if self._refusing:  # read unlocked first: this runs on every answer's pop
            with self._lock:
                refusing, self._refusing = self._refusing, False
            if refusing:
                log.warning("%s takes writes again", self.name)
        self._answered()

    def _answered(self) -> None:
        """A call to this Redis succeeded, if only a read: the end of an outage is logged."""
        with self._lock:
            began, self.down_since = self.down_since, None
            if began is None:
                return
            self.changes += 1
        log.warning("%s is reachable again after %.1fs", self.name, time.monotonic() - began)

    def saw(self, run_id: str) -> bool:
        """A check reached the server, which says it is run ``run_id``: True when that is a new
        run of a server seen before (a restart; the first run seen is not one)."""
        self._answered()
        if run_id == self.run_id:
            return False
        first, self.run_id = self.run_id is None, run_id
        if first:
            return False
        self.restarts += 1
        with self._lock:
            self.changes += 1
        return True

    def is_new(self, run_id: str) -> bool:
        """Whether ``run_id`` is another run than the one seen last (not the first seen)."""
        return self.run_id is not None and run_id != self.run_id

    def judged(self, run_id: str, persistence: Mapping[str, Any], uptime: int) -> float | None:
        """What a check that reached the server means: the moment it restarted empty, or
        ``None``. A server still replaying its append-only file reports ``aof_enabled:0``
        until it has loaded (Redis 6.2), so a new run is judged only once loading is over."""
        if int(persistence.get("loading", 0)):
            self._answered()
            return None
        if not self.saw(run_id) or int(persistence.get("aof_enabled", 0)) == 1:
            return None
        return self.lost_before(uptime)

    def refused_info(self, exc: BaseException) -> None:
        """The server refuses INFO (a managed Redis may rename it): said once."""
        self._answered()
        if not self._blind:
            self._blind = True
            log.warning("%s refuses INFO (%s): an empty restart of it goes unnoticed, and "
                        "requests it loses wait for their timeout", self.name, exc)

    @staticmethod
    def lost_before(uptime_seconds: int) -> float:
        """The ``time.monotonic()`` before which a server restarted empty, up
        ``uptime_seconds``, lost what it was sent.

        Redis counts uptime in whole wall-clock seconds, so it may read one second long: the
        restart is rounded late, never early, so no lost request is left out of doubt. A
        request published up to two seconds after it may be counted among those in doubt; the
        client then waits for its answer like for any other in doubt."""
        return time.monotonic() - max(0, uptime_seconds - 1)


class RedisWatch(RedisState):
    """:class:`RedisState` of one server, asked with the sync client ``client``."""

    def __init__(self, role: str, url: str, client: redis.Redis) -> None:
        super().__init__(role, url)
        self.client = client
        try:
            self.run_id = str(self.client.info("server")["run_id"])
        except (*REDIS_ERRORS, redis.ResponseError):
            pass  # unreachable now (or INFO refused): the first successful check says so

    def check(self) -> float | None:
        """Ask the server who it is; returns the moment it restarted empty, else ``None``.

        The moment is a ``time.monotonic()`` before which requests published to it (or answers
        stored on it) were lost. ``None`` while the server is the one seen last, when it
        restarted with AOF on (it replayed its data), or when it is unreachable (which
        :meth:`failed` records).
        """
        try:
            info = self.client.info("server")
            run_id = str(info["run_id"])
            persistence = self.client.info("persistence") if self.is_new(run_id) else {}
            return self.judged(run_id, persistence, int(info.get("uptime_in_seconds", 0)))
        except REDIS_ERRORS as exc:
            self.failed(exc)
        except redis.ResponseError as exc:
            self.refused_info(exc)
        return None
