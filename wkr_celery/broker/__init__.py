"""One service's data on Redis, in three parts that follow a request's path (and the lane the
calls on that path take):

- :class:`RequestQueue` (:mod:`.queue`): the request lists on the broker Redis: publish,
  fetch, ack, give back, withdraw, requeue a dead worker's messages, sweep, length.
- :class:`ResultStore` (:mod:`.results`): results on the result Redis: store (and hand to the
  caller), read, store a ``REVOKED`` result.
- :class:`Lane` (:mod:`.lane`): a kept connection for the calls on a request's latency path.
- :class:`ServiceRegistry` (:mod:`.registry`): what the service says about itself beside its
  queue: info, heartbeats of live workers, scaling state, the last failure.

No other code touches a service's keys. What the asyncio client needs is written once, as plans
(:mod:`.plan`: which commands, what their replies mean, no I/O) that the classes run with
:func:`run` and the asyncio client with :func:`run_async`; it runs ``publish.lua`` on its own
connection with :func:`publish_call`'s arguments (docs/design.md draws the path).
"""

from .lane import Lane
from .plan import Plan, ping_plan, run, run_async
from .queue import (
    Fetched,
    RequestQueue,
    cap_plan,
    publish_call,
    queue_length_plan,
    withdraw_plan,
)
from .registry import (
    Heartbeat,
    ServiceRegistry,
    as_str,
    info_plan,
    last_failure_plan,
    live_services_plan,
    live_workers_plan,
    services_plan,
)
from .results import ResultStore, StoredResult, stored_plan

__all__ = ["Fetched", "Heartbeat", "Lane", "Plan", "RequestQueue", "ResultStore", "ServiceRegistry",
           "StoredResult", "as_str", "info_plan", "last_failure_plan", "live_services_plan",
           "cap_plan", "live_workers_plan", "ping_plan", "publish_call", "queue_length_plan", "run",
           "run_async", "services_plan", "stored_plan", "withdraw_plan"]
