"""The asyncio client's eye on one Redis server: :class:`~.restarts.RedisState` asked over
``redis.asyncio``; what a check means is decided there, as for the sync :class:`RedisWatch`."""

from __future__ import annotations

import redis
import redis.asyncio

from ..connections import REDIS_ERRORS
from .restarts import RedisState

__all__ = ["AsyncRedisWatch"]


class AsyncRedisWatch(RedisState):
    """:class:`RedisState` of one server, asked with the asyncio client ``client``."""

    def __init__(self, role: str, url: str, client: redis.asyncio.Redis) -> None:
        super().__init__(role, url)
        self.client = client

    async def remember(self) -> None:
        """Learn which run of the server this is, so a restart from now on is seen."""
        try:
            self.run_id = str((await self.client.info("server"))["run_id"])
        except (*REDIS_ERRORS, redis.ResponseError):
            pass  # unreachable now (or INFO refused): the first successful check says so

    async def check(self) -> float | None:
        """:meth:`RedisWatch.check <.restarts.RedisWatch.check>`, awaited."""
        try:
            info = await self.client.info("server")
            run_id = str(info["run_id"])
            persistence = await self.client.info("persistence") if self.is_new(run_id) else {}
            return self.judged(run_id, persistence, int(info.get("uptime_in_seconds", 0)))
        except REDIS_ERRORS as exc:
            self.failed(exc)
        except redis.ResponseError as exc:
            self.refused_info(exc)
        return None
