"""The publisher thread of :class:`~.client.WKRClient`, and how a client's part is stopped.

Callers hand the thread two lists under the client's outbox condition: requests to send
(``encode``) and requests whose futures were cancelled (``TaskFuture.cancel``). Each round
takes both at once, sends the requests not cancelled meanwhile in one round trip, then takes
the cancelled ones that were sent before back from the service's lists in one more
(:meth:`~.protocol.Requests.withdrawal`, the plan the asyncio client runs too). One thread
does both, in that order, so a withdrawal never overtakes the publish of its request; and
while a caller publishes a lone request on its own thread the round waits for it.

A request a worker has already fetched cannot be taken back: it is predicted, and its answer,
finding no future waiting, is dropped.
"""

from __future__ import annotations

import logging
import threading
import weakref
from collections.abc import Sequence
from typing import TYPE_CHECKING

import redis

from ..broker import run
from ..connections import REDIS_ERRORS
from ..processes import forks
from .protocol import Outgoing, report_withdrawal
from .replies import Replies

if TYPE_CHECKING:
    from .client import WKRClient

__all__ = ["publish_loop", "stop"]

log = logging.getLogger("wkr_celery.client")


def publish_loop(client_ref: weakref.ref[WKRClient], cond: threading.Condition) -> None:
    """The publisher thread. It holds its client only while it has work, so that a client
    nobody references any more is collected; its finalizer (:func:`stop`) then wakes this
    thread to end. A closed client's last round still takes back what was cancelled."""
    while True:
        with cond:
            while True:
                client = client_ref()
                if client is None:
                    return
                if client._closed or (
                        (client._outbox or client._withdrawn) and not client._publishing):
                    break
                del client  # not held while waiting
                cond.wait()
            if not client._outbox and not client._withdrawn:
                return
            items, client._outbox = client._outbox, []
            cancelled, client._withdrawn = client._withdrawn, []
            client._publishing = True
        try:
            _round(client, items, cancelled)
        finally:
            with cond:
                client._publishing = False
        del client, items, cancelled  # nor their envelopes, while waiting for the next round


def _round(client: WKRClient, items: list[Outgoing], cancelled: list[Outgoing]) -> None:
    """Send ``items`` but those cancelled before they went out, then withdraw the rest of
    ``cancelled`` (sent in an earlier round, or by their caller's own thread)."""
    unsent = {item.task_id for item in items}
    gone = {request.task_id for request in cancelled}
    send = [item for item in items if item.task_id not in gone] if gone else items
    if send:
        client._publish(send)
    sent_before = [request for request in cancelled if request.task_id not in unsent]
    if sent_before:
        _withdraw_sent(client, sent_before)


def _withdraw_sent(client: WKRClient, requests: list[Outgoing]) -> None:
    """Take ``requests`` back from the service's lists where no worker has fetched them yet.
    No retry: one the broker could not take back is predicted and its answer dropped."""
    try:
        removed = run(client._broker_redis, client._requests.withdrawal(requests))
    except REDIS_ERRORS as exc:
        log.warning("could not withdraw %d cancelled request(s): %s", len(requests), exc)
        return
    report_withdrawal(len(requests), removed)


def stop(forks_at_start: int, cond: threading.Condition, publisher: threading.Thread,
         join_timeout: float, replies: Replies, connections: Sequence[redis.Redis]) -> None:
    """Stop one process's part of a client: on :meth:`WKRClient.close`, or once the client is
    collected. A part copied into a forked child is its parent's (the reply list above all),
    left alone there. It may run on one of the client's own threads (the one that dropped the
    last reference), which is not waited for."""
    if forks() != forks_at_start:
        return
    with cond:
        cond.notify_all()
    if publisher is not threading.current_thread():
        publisher.join(join_timeout)
    replies.close()
    for connection in connections:
        connection.close()
