"""Broker reads and writes written once, run by sync and asyncio callers alike.

A *plan* is a generator that says which commands to send and what their replies mean, and does
no I/O itself (the "sans-IO" way): each ``yield`` hands over a step, a function that queues
commands on a pipeline, and receives the list of their replies; the generator's ``return`` value
is the answer. redis-py's sync and asyncio pipelines queue commands with the same synchronous
calls and differ only in ``execute()``, so :func:`run` and :func:`run_async` are the only code
that tells them apart: :class:`~.queue.RequestQueue`, :class:`~.results.ResultStore` and
:class:`~.registry.ServiceRegistry` run their plans with :func:`run`, the asyncio client
(:mod:`wkr_celery.client.async_client`) the same plans with :func:`run_async`. Each step is one
round trip; a plan whose second step depends on the first (the live workers) takes two.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import TYPE_CHECKING, Any, TypeVar

import redis

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["Plan", "Step", "ping_plan", "run", "run_async"]

T = TypeVar("T")

Step = Callable[[Any], object]
"""Queues commands on a pipeline (sync or asyncio; the calls are the same)."""

Plan = Generator[Step, list[Any], T]
"""Yields steps, is sent each step's replies, returns the answer."""


def run(client: redis.Redis, plan: Plan[T]) -> T:
    """Carry out ``plan`` on a sync client, one non-transactional pipeline per step."""
    try:
        step = next(plan)
        while True:
            pipe = client.pipeline(transaction=False)
            step(pipe)
            step = plan.send(pipe.execute())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


async def run_async(client: redis.asyncio.Redis, plan: Plan[T]) -> T:
    """:func:`run` on an asyncio client: the same steps, awaited."""
    try:
        step = next(plan)
        while True:
            pipe = client.pipeline(transaction=False)
            step(pipe)
            step = plan.send(await pipe.execute())
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]


def ping_plan() -> Plan[bool]:
    """Whether the Redis answers (running it raises the connection error when it does not)."""
    (pong,) = yield lambda pipe: pipe.ping()
    return bool(pong)
