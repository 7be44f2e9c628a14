"""What a service says about itself on the broker Redis, beside its queue: the service info,
each worker's heartbeat, the elastic-worker state and why the last worker died.

Worker processes heartbeat and write the info here, the supervisor its scaling state and
failures; clients, the REST API and the production tools read them. Every write also lists the
service in :data:`~wkr_celery.keys.SERVICES`, so a client that names no service finds it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import redis

from ..keys import SERVICES, ServiceKeys

__all__ = ["ServiceRegistry", "as_str"]


class ServiceRegistry:
    """Info, heartbeats, scaling state and last failure of service ``keys.name``."""

    def __init__(self, client: redis.Redis, keys: ServiceKeys) -> None:
        self.client = client
        self.keys = keys

    # Written by the service ----------------------------------------------------------------

    def heartbeat(self, worker_id: str, status: bytes, ttl: float) -> None:
        """Say worker ``worker_id`` is alive for ``ttl`` seconds, with its figures."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.heartbeat(worker_id), status, px=int(ttl * 1000))
        pipe.sadd(self.keys.workers, worker_id)
        pipe.sadd(SERVICES, self.keys.name)
        pipe.execute()

    def write_info(self, info: Mapping[str, Any]) -> None:
        pipe = self.client.pipeline(transaction=False)
        pipe.hset(self.keys.info, mapping={k: str(v) for k, v in info.items()})
        pipe.sadd(SERVICES, self.keys.name)
        pipe.execute()

    def record_failure(self, text: str, ttl: float) -> None:
        """Keep why the last worker died (supervisor side); the service is listed, so a client
        that names no service finds it and reports this instead of "no service"."""
        pipe = self.client.pipeline(transaction=False)
        pipe.set(self.keys.failure, text, ex=max(1, int(ttl)))
        pipe.sadd(SERVICES, self.keys.name)
        pipe.execute()

    def write_scaling(self, state: Mapping[str, Any], ttl: float) -> None:
        """The supervisor's elastic-worker state; it expires when no supervisor renews it."""
        pipe = self.client.pipeline()
        pipe.hset(self.keys.scaling, mapping={k: str(v) for k, v in state.items()})
        pipe.expire(self.keys.scaling, max(1, math.ceil(ttl)))
        pipe.execute()

    # Read by anyone ------------------------------------------------------------------------

    def info(self) -> dict[str, str]:
        """The service's info hash (protocol, limits, input spec); empty before any worker."""
        return {as_str(k): as_str(v) for k, v in self.client.hgetall(self.keys.info).items()}

    def has_info(self) -> bool:
        """Whether the info hash exists (it does not after the broker restarted empty)."""
        return bool(self.client.exists(self.keys.info))

    def scaling(self) -> dict[str, str]:
        """What :meth:`write_scaling` wrote; empty when the service is not elastic."""
        return {as_str(k): as_str(v) for k, v in self.client.hgetall(self.keys.scaling).items()}

    def last_failure(self) -> str:
        """The last worker failure the supervisor recorded, or ``""``."""
        value = self.client.get(self.keys.failure)
        return as_str(value) if value is not None else ""

    def live_workers(self) -> dict[str, bytes]:
        """Heartbeat payloads of workers alive now, by worker id."""
        ids = sorted(as_str(w) for w in self.client.smembers(self.keys.workers))
        if not ids:
            return {}
        beats = self.client.mget([self.keys.heartbeat(w) for w in ids])
        return {w: b for w, b in zip(ids, beats) if isinstance(b, bytes)}


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
