"""What a service says about itself on the broker Redis, beside its queue: the service info,
each worker's heartbeat, the elastic-worker state and why the last worker died.

Worker processes heartbeat and write the info here, the supervisor its scaling state and
failures; clients, the REST API and the production tools read them. Every write also lists the
service in :data:`~wkr_celery.keys.SERVICES`, so a client that names no service finds it. The
reads a client makes are plans (:mod:`.plan`), so the asyncio client runs the same ones.

A service that stops gracefully leaves the list (:meth:`ServiceRegistry.unlist`) once no worker
of its name has a heartbeat. One killed (``kill -9``, a host lost) stays listed: readers see it
has no live worker (:func:`live_services_plan`), and its next start or a peer's graceful stop
settles it. Readers never unlist: a name without a heartbeat may be a service whose workers are
loading their models or restarting, whose recorded failure a client must still find, and a
reader may hold a read-only Redis user.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import redis

from .. import scripts
from ..codec import loads
from ..errors import DecodeError
from ..keys import SERVICES, ServiceKeys
from .plan import Plan, run

__all__ = ["Heartbeat", "ServiceRegistry", "as_str", "info_plan", "last_failure_plan",
           "live_services_plan", "live_workers_plan", "read_beat", "services_plan"]

#: A worker's heartbeat, decoded: its id, pid, host, device and figures (see ``Serving._beat``);
#: ``supervisor``, the pid of the wkr-serving-start that started it, only where one did (a
#: worker started by hand, or by a version before this field, has none).
Heartbeat = dict[str, Any]


class ServiceRegistry:
    """Info, heartbeats, scaling state and last failure of service ``keys.name``."""

    def __init__(self, client: redis.Redis, keys: ServiceKeys) -> None:
        self.client = client
        self.keys = keys
        self._unlist = client.register_script(scripts.UNLIST)
        self._write_info = client.register_script(scripts.WRITE_INFO)

    # Written by the service ----------------------------------------------------------------

    def heartbeat(self, worker_id: str, status: bytes, ttl: float,
                  grown: Mapping[str, float] | None = None) -> bool:
        """Say worker ``worker_id`` is alive for ``ttl`` seconds, with its figures, and add
        ``grown`` (what its counters gained since its last beat) to the service's totals, in
        one transaction. True when ``grown`` was added. A totals hash someone spoiled (another
        type, a field that is not a number) is deleted, the counters starting from zero as
        after a reset, rather than failing the beat: the beat is what keeps a worker alive."""
        pipe = self.client.pipeline(transaction=True)
        pipe.set(self.keys.heartbeat(worker_id), status, px=int(ttl * 1000))
        pipe.sadd(self.keys.workers, worker_id)
        pipe.sadd(SERVICES, self.keys.name)
        return self._with_totals(pipe, grown or {}, first=3)

    def add_totals(self, grown: Mapping[str, float]) -> None:
        """Add a stopping worker's last figures to the service's totals, without a beat."""
        if grown:
            self._with_totals(self.client.pipeline(transaction=True), grown, first=0)

    def _with_totals(self, pipe: Any, grown: Mapping[str, float], first: int) -> bool:
        """Run ``pipe`` with ``grown`` added to the totals hash after its ``first`` commands,
        whose errors are raised; a spoiled hash (see :meth:`heartbeat`) is deleted: False."""
        for field, amount in grown.items():
            pipe.hincrbyfloat(self.keys.totals, field, amount)
        replies = pipe.execute(raise_on_error=False)
        for reply in replies[:first]:
            if isinstance(reply, Exception):
                raise reply
        if any(isinstance(reply, Exception) for reply in replies[first:]):
            self.client.delete(self.keys.totals)
            return False
        return True

    def write_info(self, info: Mapping[str, Any], deployed: str, orphan: str = "") -> bool:
        """Replace the service info with ``info`` of the deploy ``deployed`` (its supervisor's
        start, epoch seconds as text), unless it names a newer deploy: the info is the
        newest version's while two overlap (``lua/write_info.lua``). ``orphan``: a newer
        deploy the caller saw with no live worker, whose info it may replace. True if written."""
        fields = [word for key, value in {**info, "deployed": deployed}.items()
                  for word in (key, str(value))]
        return bool(self._write_info(keys=[self.keys.info, SERVICES],
                                     args=[self.keys.name, deployed, orphan, *fields]))

    def info_deployed(self) -> str | None:
        """The deploy the service info names; None when there is no info (a Redis restarted
        empty) or it names none (written by a version before deploys were named)."""
        try:
            value = self.client.hget(self.keys.info, "deployed")
        except redis.ResponseError:  # spoiled (another type): the write replaces it
            return None
        return None if value is None else as_str(value)

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

    def unlist(self) -> bool:
        """The service stops gracefully: take its name off the services list unless a worker
        of it still has a heartbeat (another host serving the same name). True if unlisted."""
        keys = self.keys
        return bool(self._unlist(keys=[SERVICES, keys.workers],
                                 args=[keys.name, keys.heartbeat_prefix]))

    # Read by anyone ------------------------------------------------------------------------

    def info(self) -> dict[str, str]:
        """The service's info hash (protocol, limits, input spec); empty before any worker."""
        return run(self.client, info_plan(self.keys))

    def scaling(self) -> dict[str, str]:
        """What :meth:`write_scaling` wrote; empty when the service is not elastic."""
        return {as_str(k): as_str(v) for k, v in self.client.hgetall(self.keys.scaling).items()}

    def totals(self) -> dict[str, float]:
        """The service's cumulative figures (see :class:`~wkr_celery.server.status.Reported`);
        a field that does not read as a finite number is left out."""
        numbers = {}
        for field, value in self.client.hgetall(self.keys.totals).items():
            try:
                number = float(value)
            except ValueError:
                continue
            if math.isfinite(number):
                numbers[as_str(field)] = number
        return numbers

    def last_failure(self) -> str:
        """The last worker failure the supervisor recorded, or ``""``."""
        return run(self.client, last_failure_plan(self.keys))

    def live_workers(self) -> dict[str, Heartbeat]:
        """Heartbeats of workers alive now, decoded (once, here), by worker id."""
        return run(self.client, live_workers_plan(self.keys))


# Plans: the reads above, for sync and asyncio callers alike (see :mod:`.plan`) ---------------

def services_plan() -> Plan[list[str]]:
    """The names of the services listed on this broker."""
    (names,) = yield lambda pipe: pipe.smembers(SERVICES)
    return [as_str(name) for name in names]


def live_services_plan() -> Plan[dict[str, bool]]:
    """Each service listed on this broker, and whether a worker of it has a heartbeat now: a
    service killed without a graceful stop stays listed (see the module's docstring), so a
    client that names no service chooses among the live ones. Three round trips, whatever the
    number of services."""
    names = sorted((yield from services_plan()))
    if not names:
        return {}
    keys = [ServiceKeys(name) for name in names]
    members = yield lambda pipe: [pipe.smembers(k.workers) for k in keys]
    beats = [(k.name, k.heartbeat(as_str(w))) for k, ids in zip(keys, members) for w in ids]
    alive: set[str] = set()
    if beats:
        (values,) = yield lambda pipe: pipe.mget([key for _, key in beats])
        alive = {name for (name, _), value in zip(beats, values) if value is not None}
    return {name: name in alive for name in names}


def info_plan(keys: ServiceKeys) -> Plan[dict[str, str]]:
    """:meth:`ServiceRegistry.info`."""
    (info,) = yield lambda pipe: pipe.hgetall(keys.info)
    return {as_str(k): as_str(v) for k, v in info.items()}


def last_failure_plan(keys: ServiceKeys) -> Plan[str]:
    """:meth:`ServiceRegistry.last_failure`."""
    (value,) = yield lambda pipe: pipe.get(keys.failure)
    return as_str(value) if value is not None else ""


def live_workers_plan(keys: ServiceKeys) -> Plan[dict[str, Heartbeat]]:
    """:meth:`ServiceRegistry.live_workers`: the registered ids, then their heartbeats, each
    decoded once (:func:`read_beat`); one that does not read as a heartbeat is no live
    worker."""
    (members,) = yield lambda pipe: pipe.smembers(keys.workers)
    ids = sorted(as_str(w) for w in members)
    if not ids:
        return {}
    (beats,) = yield lambda pipe: pipe.mget([keys.heartbeat(w) for w in ids])
    live = {w: read_beat(b) for w, b in zip(ids, beats) if isinstance(b, bytes)}
    return {w: beat for w, beat in live.items() if beat is not None}


#: Heartbeat figures every reader takes for numbers (see ``Serving._beat``).
_NUMBERS = ("pid", "device_id", "started", "requests", "failed", "batches",
            "predict_seconds", "buffered", "supervisor")
_TEXTS = ("worker_id", "host", "version", "deployed")
_STATISTIC = frozenset({"count", "sum", "min", "max"})


def read_beat(raw: bytes) -> Heartbeat | None:
    """``raw`` decoded, if it is a heartbeat a worker could have written (a map whose figures
    are numbers where numbers go), else ``None``. Anyone who can write to the broker can add a
    worker id and a heartbeat; one that did not decode, or held text where a count goes, raised
    in every reader (the REST API then answered each request 400 or 500, and the elastic
    supervisor stopped). Such a beat is no live worker. The one place a heartbeat is decoded:
    readers take the map it returns."""
    try:
        beat = loads(raw)
    except DecodeError:
        return None
    return beat if isinstance(beat, dict) and _well_formed(beat) else None


def _well_formed(beat: dict[Any, Any]) -> bool:
    if not all(_number(beat.get(k, 0)) for k in _NUMBERS):
        return False
    if not all(isinstance(beat.get(k, ""), str) for k in _TEXTS):
        return False
    sizes, stats = beat.get("batch_sizes") or {}, beat.get("statistics") or {}
    if not isinstance(sizes, dict) or not isinstance(stats, dict):
        return False
    if not all(type(k) is int and type(v) is int for k, v in sizes.items()):
        return False
    return all(isinstance(s, dict) and _STATISTIC <= s.keys()
               and all(_number(s[f]) for f in _STATISTIC) for s in stats.values())


def _number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def as_str(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
