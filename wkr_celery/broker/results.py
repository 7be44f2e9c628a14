"""The result store of one service: where worker processes store results, in Celery's format.

A result is kept under ``celery-task-meta-<task id>`` for ``result_expires`` seconds (so a plain
Celery ``AsyncResult`` finds it) and handed to its caller at once: pushed onto the client's reply
list, or ``PUBLISH``ed on the task's key for a producer with no reply list. One ``store.lua``
call stores a whole batch; when the result store is the broker's Redis, the same call acks the
batch's messages, so a crash can never leave an acked request unanswered. The REST API reads
results here by task id, and stores the ``REVOKED`` result of a task it withdrew; clients whose
replies may have been lost read the stored ones with :func:`stored_plan` (sync and asyncio).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis

from .. import scripts
from ..keys import ServiceKeys, reply_key, task_meta_key
from ..messages import decode_meta, encode_meta, now_iso, revoked_meta
from .lane import Lane
from .plan import Plan, ping_plan, run

__all__ = ["ResultStore", "StoredResult", "stored_plan"]

_MGET_CHUNK = 1000  # keys per MGET, so no one command grows without bound

StoredResult = tuple[str, bytes, str | None]
"""One result to store: task id, encoded Celery meta, the id of the client waiting or ``None``."""


class ResultStore:
    """Results of service ``keys.name`` on the result Redis ``client``."""

    def __init__(self, client: redis.Redis, keys: ServiceKeys) -> None:
        self.client = client
        self.keys = keys
        self._store = client.register_script(scripts.STORE)
        self._lane = Lane(client)  # stores are on the latency path

    def store(
        self,
        results: Sequence[StoredResult],
        expires: int,
        *,
        ack: tuple[str, Sequence[int], Sequence[bytes], Sequence[bytes]] | None = None,
    ) -> None:
        """Store ``results`` in one command: each client's results go onto its reply list, a
        foreign producer's are ``PUBLISH``ed. With ``ack`` = (worker id, ids, suspects, landed
        messages), also forget those messages, which is only right when this store is the
        broker's Redis."""
        targets: dict[str, int] = {}
        keys: list[Any] = [self.keys.inflight(ack[0]) if ack else "", self.keys.deaths,
                           self.keys.landing(ack[0]) if ack else ""]
        datas: list[Any] = []
        where: list[int] = []
        for task_id, data, client_id in results:
            keys.append(task_meta_key(task_id))
            datas.append(data)
            where.append(0 if client_id is None
                         else targets.setdefault(client_id, len(targets) + 1))
        keys.extend(reply_key(client_id) for client_id in targets)
        ids, suspects, landed = (ack[1], ack[2], ack[3]) if ack else ((), (), ())
        self._lane.run_script(self._store, keys, [expires, len(results), len(ids), len(suspects),
                                                  len(landed), *datas, *where, *ids, *suspects,
                                                  *landed])

    def untaken(self, reply_lists: Sequence[str]) -> list[str]:
        """Those of ``reply_lists`` that still hold replies no client has popped."""
        names = list(reply_lists)
        pipe = self.client.pipeline(transaction=False)
        for name in names:
            pipe.exists(name)
        return [name for name, left in zip(names, pipe.execute()) if left]

    def read(self, task_id: str) -> dict[str, Any] | None:
        """The stored Celery result of ``task_id``, decoded, or ``None`` while there is none."""
        stored = run(self.client, stored_plan([task_id]))
        return decode_meta(stored[0]) if stored else None

    def store_revoked(self, task_id: str, expires: int) -> dict[str, Any]:
        """Store (and ``PUBLISH``) the ``REVOKED`` result of a task taken back from the queue
        before any worker fetched it; returns that result."""
        meta = revoked_meta(task_id, now_iso())
        self.store([(task_id, encode_meta(meta), None)], expires)
        return meta

    def ping(self) -> bool:
        """Whether the result Redis answers (raises the connection error when it does not)."""
        return run(self.client, ping_plan())


def stored_plan(task_ids: Sequence[str]) -> Plan[list[bytes]]:
    """The stored results (encoded Celery meta) of those of ``task_ids`` that have one, in one
    round trip."""
    ids = list(task_ids)
    chunks = [ids[start:start + _MGET_CHUNK] for start in range(0, len(ids), _MGET_CHUNK)]

    def step(pipe: Any) -> None:
        for chunk in chunks:
            pipe.mget([task_meta_key(t) for t in chunk])
    found = yield step
    return [data if isinstance(data, bytes) else data.encode()
            for values in found for data in values if data is not None]
