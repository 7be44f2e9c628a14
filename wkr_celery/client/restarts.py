"""Noticing that a Redis server restarted empty, so requests it held fail instead of hanging.

A Redis restarted without an append-only file comes back with none of the queued requests or
stored replies it held, and nothing on the wire says so: connections simply reconnect. The
server's ``run_id`` changes on every start, so a client that remembers it can tell. Requests
published before the restart are then lost unless the server runs with AOF on.
"""

from __future__ import annotations

import time

import redis

__all__ = ["RestartWatch"]


class RestartWatch:
    """Remembers one Redis server's ``run_id``; :meth:`lost_before` reports an empty restart."""

    def __init__(self, client: redis.Redis) -> None:
        self.client = client
        self.restarts = 0  # run_id changes seen, with or without persistence
        self.run_id: str | None = None
        try:
            self.run_id = self._server()[0]
        except (redis.RedisError, OSError):
            pass  # unreachable now: the first successful check remembers the server

    def _server(self) -> tuple[str, int]:
        info = self.client.info("server")
        return str(info["run_id"]), int(info.get("uptime_in_seconds", 0))

    def lost_before(self) -> float | None:
        """``time.monotonic()`` before which published requests were lost, or ``None``.

        ``None`` while the server is the one seen last, or when it restarted with AOF on
        (it replayed its data). The moment is rounded late (uptime is in whole seconds), so a
        request published up to two seconds after the restart may be counted lost: its caller
        is told and may send again, rather than wait on an answer that cannot come.
        """
        run_id, uptime = self._server()
        if run_id == self.run_id:
            return None
        if self.run_id is None:
            self.run_id = run_id
            return None
        persistence = self.client.info("persistence")
        if int(persistence.get("loading", 0)):
            # Still replaying its append-only file, and reporting aof_enabled:0 meanwhile
            # (Redis 6.2): judge it once loaded, at the next check.
            return None
        self.run_id = run_id
        self.restarts += 1
        if int(persistence.get("aof_enabled", 0)) == 1:
            return None
        # Redis counts uptime in whole wall-clock seconds, so it may read one second long:
        # round the restart late, never early, so no lost request is taken for a served one.
        return time.monotonic() - max(0, uptime - 1)
