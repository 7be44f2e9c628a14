"""What :class:`WKRClient` and :class:`AsyncWKRClient` share: everything about a request but I/O.

Both clients find the result Redis the same way (:class:`Address`), turn an input into an
envelope and enqueue it the same way as the REST API's ``POST /tasks`` (:class:`Requests`, the
one send path), read a reply into a result or the right exception (:func:`read_reply`), and use
the same words when the service refuses or a request runs late. Only how they wait differs: threads and
``concurrent.futures`` in :mod:`.client`, one event loop in :mod:`.async_client`.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import numpy as np

from .. import envelope
from ..broker import Plan, RequestQueue, publish_call, withdraw_plan
from ..codec import loads
from ..connections import RedisRefused, redacted, redis_url
from ..errors import (
    ConfigError,
    DeadlineExceeded,
    InputError,
    RequestFailed,
    ServiceOverloaded,
    ServiceUnavailable,
)
from ..inputs import DEFAULT_MAX_PAYLOAD, InputSpec
from ..keys import PRIORITY_STEPS, ServiceKeys, priority_step
from ..messages import deadline_after, error_of
from ..result_store import not_where_it_stores, result_url_from

__all__ = ["Address", "InputContract", "Outgoing", "Reply", "Requests", "Sent", "read_reply",
           "overloaded", "publish_failed", "deadline_exceeded", "report_withdrawal"]

log = logging.getLogger("wkr_celery.client")
#: How often (seconds) a client looks at the service's input contract again for an input the
#: one it read refuses (:meth:`Requests.recheck_due`).
CONTRACT_RECHECK_SECONDS = 1.0



@dataclass(frozen=True)
class Address:
    """Where a client finds a service, from its constructor's arguments and the service info.

    ``given_as`` is how the caller named the result Redis (``port_out=8996``,
    ``result_url=...``), for the error that says how to fix it; ``""`` when they did not.
    """

    broker_url: str
    given_result_url: str | None
    fallback_result_url: str
    given_as: str = ""

    @classmethod
    def of(cls, ip: str, port: int, port_out: int | None, broker_url: str | None,
           result_url: str | None) -> Address:
        """Results: the URL given; else ``port_out`` on the broker's host (the seed's form);
        else where the service's workers say they store them (``result_store``)."""
        broker = redis_url(broker_url, host=ip, port=port)
        fallback = redis_url(broker_url, host=ip, port=8998)
        if result_url:
            return cls(broker, result_url, fallback, f"result_url={redacted(result_url)!r}")
        if port_out and not broker_url:
            return cls(broker, redis_url(None, host=ip, port=port_out), fallback,
                       f"port_out={port_out}")
        return cls(broker, None, fallback)

    def result_url(self, info: Mapping[str, str], name: str = "") -> str:
        """The result Redis to read: the one given, unless the service plainly stores its
        results elsewhere (a ``ConfigError`` naming both: otherwise every answer would be
        waited for where none ever comes); else the advertised one.

        Asks Redis (:func:`~wkr_celery.result_store.not_where_it_stores`) only when the two addresses
        differ on one host, which a port mapped to another number also looks like."""
        store = info.get("result_store")
        advertised = result_url_from(self.broker_url, store, fallback="")
        if self.given_result_url is None:
            return advertised or self.fallback_result_url
        if advertised and not_where_it_stores(self.given_result_url, advertised):
            raise results_elsewhere(name, advertised, store or "", self.given_as,
                                    self.given_result_url)
        return self.given_result_url


def results_elsewhere(name: str, advertised: str, store: str, given_as: str,
                      given: str) -> ConfigError:
    port = urlsplit(advertised).port
    fix = (f"pass port_out={port}" if given_as.startswith("port_out") and port
           else f"pass result_url={redacted(advertised)!r}")
    return ConfigError(
        f"service {name!r} stores its results on {redacted(advertised)} (it advertises "
        f"result_store {store!r}), but this client was told to read them from "
        f"{redacted(given)} ({given_as}), where no answer would come; {fix}, or leave "
        f"{given_as.partition('=')[0]} out so the client follows the service")


@dataclass(frozen=True)
class Outgoing:
    """One request, ready to publish: its list (index into ``ServiceKeys.queues``), its exact
    envelope (:mod:`wkr_celery.envelope`; what a revoke removes with ``LREM``) and its
    ``time.monotonic()`` deadline."""

    task_id: str
    index: int
    message: bytes
    expiry: float | None


@dataclass(frozen=True)
class Sent:
    """What one enqueue did: the requests the queue took, those it refused (it was at its cap)
    and the error their callers get."""

    accepted: list[Outgoing]
    refused: list[Outgoing]
    error: ServiceOverloaded | None


@dataclass(frozen=True)
class Reply:
    """A stored answer: the result, or the error its caller gets."""

    task_id: str
    result: Any
    error: RequestFailed | None


class InputContract:
    """What both clients tell about the inputs their service takes, read from :attr:`spec`."""

    @property
    def spec(self) -> InputSpec:
        raise NotImplementedError

    @property
    def protocol(self) -> str:
        return self.spec.protocol

    @property
    def max_payload(self) -> int:
        return self.spec.max_payload

    @property
    def input_shape(self) -> tuple[int | None, ...] | None:
        return self.spec.shape

    @property
    def input_dtype(self) -> np.dtype[Any] | None:
        return self.spec.dtype


class Requests:
    """The one send path to one service, for both clients and the REST API: builds each request
    (task id → deadline → priority → envelope, :meth:`make`) and enqueues them under the
    service's queue cap (:meth:`enqueue`), with the same overload error for every sender.

    ``reply_to`` is the client id whose reply list gets the results, or ``None`` for a producer
    that reads them from the result key (``POST /tasks``). ``clock`` is the broker Redis's time
    (``RedisClock.now``): deadlines are stamped on it.
    """

    def __init__(self, keys: ServiceKeys, info: Mapping[str, str], *, reply_to: str | None,
                 timeout: float | None, priority: int, clock: Callable[[], float],
                 max_payload: int = DEFAULT_MAX_PAYLOAD, max_queue: int = 0) -> None:
        self.keys = keys
        self.clock = clock
        self.reply_to = reply_to
        self.timeout = timeout
        self.priority = priority
        self.follow(info, max_payload=max_payload, max_queue=max_queue)
        # Task ids: a random prefix (the client's id) plus a counter. Unique like uuid4 (64
        # random bits per sender, never reused within one), at a tenth of the cost per request.
        # The counter is itertools.count itself, whose next() is one step under the GIL: a
        # generator shared by a client's threads raised "generator already executing" when two
        # of them asked at once.
        self._id_prefix = (reply_to or uuid.uuid4().hex)[:20]
        self._id_counter = itertools.count()
        self._contract_read = -CONTRACT_RECHECK_SECONDS  # see recheck_due

    def follow(self, info: Mapping[str, str], *, max_payload: int = DEFAULT_MAX_PAYLOAD,
               max_queue: int = 0) -> None:
        """Take the input contract, queue cap and batch size from the service info (again);
        ``max_payload`` and ``max_queue`` are used where the info names none."""
        self._defaults = (max_payload, max_queue)
        self._contract = self.spec = InputSpec.from_info(info, max_payload)
        self.max_queue = int(info.get("max_queue") or max_queue)
        self.batch_size = int(info.get("batch_size") or 32)

    def recheck_due(self) -> bool:
        """Whether an input refused on the contract read earlier may look at the service's own
        now (a new version may have taken over): at most once a second, each look being a
        read of the service info."""
        now = time.monotonic()
        if now - self._contract_read < CONTRACT_RECHECK_SECONDS:
            return False
        self._contract_read = now
        return True

    def follow_changed(self, info: Mapping[str, str]) -> bool:
        """:meth:`follow` ``info`` when the input contract it names is not the one last read (a
        new version of the service took over); True when so. Otherwise a spec set by hand
        stays."""
        if not info or InputSpec.from_info(info, self._defaults[0]) == self._contract:
            return False
        self.follow(info, max_payload=self._defaults[0], max_queue=self._defaults[1])
        return True

    def make(self, x: Any, *, timeout: float | None = None,
             priority: int | str | None = None) -> Outgoing:
        """The request for ``x``; ``InputError`` (naming the service) when it cannot be sent."""
        body = self._body(x)
        timeout = self.timeout if timeout is None else timeout
        deadline = deadline_after(timeout, self.clock())
        expiry = None if timeout is None else time.monotonic() + timeout
        step = self.priority if priority is None else priority_step(priority)
        task_id = f"{self._id_prefix}{next(self._id_counter):012x}"
        message = envelope.build(task_id, body, client_id=self.reply_to, deadline=deadline,
                                 priority=step)
        return Outgoing(task_id, PRIORITY_STEPS.index(step), message, expiry)

    def enqueue(self, queue: RequestQueue, requests: Sequence[Outgoing]) -> Sent:
        """Publish ``requests`` in order in one round trip, as many as fit under the cap.
        Redis errors propagate: each sender retries, or gives up, in its own way."""
        accepted = queue.publish([(r.index, r.message) for r in requests], cap=self.max_queue)
        if accepted < len(requests):  # refused at the service's cap: name the one it has now
            self.max_queue = queue.cap(self.max_queue)
        return self.sent(requests, accepted)

    def publish_call(self, requests: Sequence[Outgoing]) -> tuple[list[str], list[Any]]:
        """The keys and arguments of the ``publish.lua`` call that enqueues ``requests``; the
        asyncio client runs it on its own connection, then reads the reply with :meth:`sent`."""
        return publish_call(self.keys, [(r.index, r.message) for r in requests],
                            cap=self.max_queue)

    def sent(self, requests: Sequence[Outgoing], accepted: int) -> Sent:
        """What became of ``requests`` when the queue took the first ``accepted``."""
        refused = list(requests[accepted:])
        return Sent(list(requests[:accepted]), refused,
                    overloaded(self.keys.name, self.max_queue) if refused else None)

    def queue_of(self, request: Outgoing) -> str:
        return self.keys.queues[request.index]

    def withdrawal(self, requests: Sequence[Outgoing]) -> Plan[int]:
        """The plan (:func:`~wkr_celery.broker.withdraw_plan`) that takes ``requests`` back
        from the service's lists where no worker has fetched them yet; both clients run it
        when a caller cancels. Newest first: task ids count up, and the newest message of a
        list is at its head, where ``LREM`` starts looking. Returns how many it took back."""
        newest_first = sorted(requests, key=lambda r: r.task_id, reverse=True)
        return withdraw_plan(self.keys, [(self.queue_of(r), r.message) for r in newest_first])

    def _body(self, x: Any) -> bytes:
        try:
            return self.spec.encode(x)
        except InputError as exc:  # say which service, for callers talking to several
            raise type(exc)(f"service {self.keys.name!r}: {exc}") from None


def read_reply(data: Any) -> Reply | None:
    """The answer a stored Celery result holds; ``None`` (logged) when it cannot be read.

    Never raises: anyone who can write to the result Redis can push onto a reply list, and
    an error here (a task id that is a list and cannot be looked up, a failure whose result is
    an array) killed the client's listener, leaving every later request of that client
    waiting for ever.
    """
    try:
        meta = loads(data)
        task_id = meta["task_id"]
        if not isinstance(task_id, str):
            raise TypeError(f"task id is a {type(task_id).__name__}")
        if meta.get("status") == "SUCCESS":
            return Reply(task_id, meta.get("result"), None)
        return Reply(task_id, None, error_of(meta))
    except Exception:  # a reply we cannot read answers nobody; say so and go on
        log.error("dropped an unreadable reply of %d bytes", len(data))
        return None


def overloaded(name: str, max_queue: int) -> ServiceOverloaded:
    return ServiceOverloaded(
        f"service {name!r} has {max_queue} requests queued (-max_queue); retry later")


#: Seconds before a publish the broker did not take is tried again (doubled each time, to 1 s).
FIRST_RETRY = 0.05


def refused_publish(count: int, exc: BaseException, connect_timeout: float) -> None:
    """Say why a publish waits when the broker refuses it (an unreachable broker is said by
    the watch thread); once per batch of requests, not once per retry."""
    if isinstance(exc, RedisRefused):
        log.warning("could not publish %d request(s) yet: %s; retrying for up to %.0fs",
                    count, exc, connect_timeout)


def report_withdrawal(count: int, removed: int) -> None:
    """Say what became of ``count`` cancelled requests of which the queue gave ``removed`` back."""
    log.debug("withdrawal: %d taken back from the queue, %d held by workers or never queued "
              "(answers dropped)", removed, count - removed)


def publish_failed(broker_url: str, exc: BaseException) -> ServiceUnavailable:
    return ServiceUnavailable(f"could not publish to {redacted(broker_url)}: {exc}")


def deadline_exceeded() -> DeadlineExceeded:
    return DeadlineExceeded("no result before the request's timeout")

