"""Every Redis key and queue name wkr-celery touches, built here and nowhere else.

Broker Redis (``-port_in`` / ``-broker_url``):

=================================  ====================================================
``wkr:services``                   set of service names on this Redis
``<name>`` and ``<name>\\x06\\x16<p>``  the service's request lists, kombu's priority naming
``wkr:<name>:info``                hash: version, protocol, batch_size, limits, input spec
``wkr:<name>:scaling``             hash: elastic workers: floor, ceiling, wait, last decision
``wkr:<name>:workers``             set of registered worker ids
``wkr:<name>:hb:<wid>``            heartbeat (expires after the visibility timeout)
``wkr:<name>:inflight:<wid>``      hash: messages a worker holds, field = seq*8 + list index
``wkr:<name>:seq``                 counter for inflight fields (starts from the clock, fetch.lua)
``wkr:<name>:landing:<wid>``       list: what an idle worker took with BLMOVE (id 6)
``wkr:<name>:suspect``             requests held by a worker that died, served one at a time
``wkr:<name>:deaths``              hash: message -> number of worker deaths it was part of
``wkr:<name>:failure``             the last worker failure, for clients (expires)
=================================  ====================================================

Result Redis (``-port_out`` / ``-result_url``):

=================================  ====================================================
``celery-task-meta-<task id>``     the result in Celery's format (``AsyncResult`` reads it)
``wkr:reply:<client id>``          list: results for one client, which pops them in bulk
=================================  ====================================================

Decentralize control (``wkr-decentral-start -port`` / ``-port_out`` / ``-broker_url``):

=====================================  ================================================
``wkr:decentral:<name>:control``       list: commands to the central (``-port``)
``wkr:decentral:<name>:owner``         the running central's token (expires; one per name)
``wkr:decentral:<name>:status``        JSON status the central rewrites every second
``wkr:decentral:<name>:reply:<id>``    list: the central's answer to one command
``<queue key>``                        a ``RedisHandler`` job list, named by the user as is
=====================================  ================================================

Commands go to the ``-port`` Redis; the owner, status and replies live on ``-port_out``
(one Redis when the two are the same, or when ``-broker_url`` is given).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass

__all__ = [
    "SERVICES",
    "PRIORITY_STEPS",
    "PRIORITIES",
    "ServiceKeys",
    "reply_key",
    "task_meta_key",
    "priority_step",
    "DecentralKeys",
    "job_queue",
]

SERVICES = "wkr:services"

#: kombu's Redis priority sub-queues, in the order they are served (0 first).
PRIORITY_STEPS = (0, 3, 6, 9)
#: Named levels for ``encode(priority=...)``.
PRIORITIES = {"high": 0, "normal": 3, "low": 6}
_KOMBU_SEP = "\x06\x16"
TASK_META_PREFIX = "celery-task-meta-"


def priority_step(priority: int | str) -> int:
    """Map a level name or a 0..9 kombu priority to its sub-queue step (0 is served first)."""
    if isinstance(priority, str) and priority in PRIORITIES:
        return PRIORITIES[priority]
    # an unknown name, True, 2.5: none is a level (a bool is an int to Python)
    if isinstance(priority, bool) or not isinstance(priority, numbers.Integral):
        raise ValueError(f"priority {priority!r} is not one of {sorted(PRIORITIES)} or 0..9")
    if not 0 <= int(priority) <= 9:
        raise ValueError(f"priority {priority} is outside 0..9 (0 is served first)")
    return max(step for step in PRIORITY_STEPS if step <= int(priority))


@dataclass(frozen=True)
class ServiceKeys:
    """Broker keys of one service."""

    name: str

    @property
    def queue(self) -> str:
        """The Celery queue name: requests routed here are served in batches."""
        return self.name

    @property
    def control_queue(self) -> str:
        """Queue the Celery consumer of each worker listens on for ordinary tasks."""
        return f"{self.name}.celery"

    def queue_for(self, step: int) -> str:
        return self.name if step == 0 else f"{self.name}{_KOMBU_SEP}{step}"

    @property
    def queues(self) -> tuple[str, ...]:
        """Request lists in the order they are served."""
        return tuple(self.queue_for(step) for step in PRIORITY_STEPS)

    @property
    def info(self) -> str:
        return f"wkr:{self.name}:info"

    @property
    def scaling(self) -> str:
        """Hash: the supervisor's elastic-worker state and its last decision (expires)."""
        return f"wkr:{self.name}:scaling"

    @property
    def totals(self) -> str:
        """Hash: the service's cumulative figures, added to by every worker's heartbeat. It
        outlives worker processes (and graceful service stops): the service's counters."""
        return f"wkr:{self.name}:totals"

    @property
    def workers(self) -> str:
        return f"wkr:{self.name}:workers"

    def heartbeat(self, worker_id: str) -> str:
        return f"wkr:{self.name}:hb:{worker_id}"

    @property
    def heartbeat_prefix(self) -> str:
        return f"wkr:{self.name}:hb:"

    def inflight(self, worker_id: str) -> str:
        return f"wkr:{self.name}:inflight:{worker_id}"

    @property
    def inflight_prefix(self) -> str:
        return f"wkr:{self.name}:inflight:"

    @property
    def seq(self) -> str:
        return f"wkr:{self.name}:seq"

    @property
    def arrivals(self) -> str:
        """The request list idle workers block on (normal priority, our clients' default)."""
        return self.queues[1]

    def landing(self, worker_id: str) -> str:
        return f"wkr:{self.name}:landing:{worker_id}"

    @property
    def landing_prefix(self) -> str:
        return f"wkr:{self.name}:landing:"

    @property
    def suspect(self) -> str:
        return f"wkr:{self.name}:suspect"

    @property
    def deaths(self) -> str:
        return f"wkr:{self.name}:deaths"

    @property
    def failure(self) -> str:
        """Why the last worker died, set by the supervisor; a client that finds no live worker
        reports it."""
        return f"wkr:{self.name}:failure"


def reply_key(client_id: str) -> str:
    return f"wkr:reply:{client_id}"


def task_meta_key(task_id: str) -> str:
    return f"{TASK_META_PREFIX}{task_id}"


@dataclass(frozen=True)
class DecentralKeys:
    """Control keys of one decentralize central (``-name``)."""

    name: str

    @property
    def control(self) -> str:
        return f"wkr:decentral:{self.name}:control"

    @property
    def owner(self) -> str:
        return f"wkr:decentral:{self.name}:owner"

    @property
    def status(self) -> str:
        return f"wkr:decentral:{self.name}:status"

    def reply(self, command_id: str) -> str:
        return f"wkr:decentral:{self.name}:reply:{command_id}"


def job_queue(key: str) -> str:
    """A ``RedisHandler`` list: the user's name, unprefixed, so any producer can ``LPUSH`` to it."""
    if not key or any(c in key for c in " \n\t"):
        raise ValueError(f"queue key {key!r} must be non-empty without whitespace")
    return key
