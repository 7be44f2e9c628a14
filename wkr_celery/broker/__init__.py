"""One service's data on Redis, in three parts that follow a request's path:

- :class:`RequestQueue` (:mod:`.queue`): the request lists on the broker Redis: publish,
  fetch, ack, give back, withdraw, requeue a dead worker's messages, sweep, length.
- :class:`ResultStore` (:mod:`.results`): results on the result Redis: store (and hand to the
  caller), read, store a ``REVOKED`` result.
- :class:`ServiceRegistry` (:mod:`.registry`): what the service says about itself beside its
  queue: info, heartbeats of live workers, scaling state, the last failure.

No other code touches a service's keys, but the asyncio client, which runs ``publish.lua``
(with :func:`publish_call`'s arguments) and withdraws on its own connection (docs/design.md
draws the path).
"""

from .queue import Fetched, RequestQueue, publish_call
from .registry import ServiceRegistry, as_str
from .results import ResultStore, StoredResult

__all__ = ["Fetched", "RequestQueue", "ResultStore", "ServiceRegistry", "StoredResult", "as_str",
           "publish_call"]
