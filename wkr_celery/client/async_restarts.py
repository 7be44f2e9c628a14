"""The asyncio client's eye on one Redis server: :class:`~.protocol.ServerRun` asked over
``redis.asyncio`` (what :mod:`.restarts` does for the sync client)."""

from __future__ import annotations

import redis.asyncio

from .protocol import ServerRun

__all__ = ["AsyncRestartWatch"]


class AsyncRestartWatch:
    """One Redis server a client uses; :meth:`check` asks it which run it is."""

    def __init__(self, url: str, client: redis.asyncio.Redis) -> None:
        self.url = url
        self.client = client
        self.run = ServerRun()

    async def check(self) -> tuple[bool, float | None]:
        """``(restarted, lost_before)``: whether the server restarted since the last check,
        and, when it did without persistence, the ``time.monotonic()`` before which what it
        held was lost. Raises the Redis error when the server cannot be reached."""
        info = await self.client.info("server")
        if not self.run.restarted(str(info["run_id"])):
            return False, None
        if int((await self.client.info("persistence")).get("aof_enabled", 0)) == 1:
            return True, None
        return True, ServerRun.lost_before(int(info.get("uptime_in_seconds", 0)))
