"""What keeps the asyncio client's I/O tasks alive through a Ctrl+C in a notebook.

A notebook's event loop runs in the main thread, where the kernel's interrupt (SIGINT) raises
``KeyboardInterrupt`` in whatever code runs at that moment: often a step of one of the client's
own tasks (the publisher, the listener, a watch). The exception leaves the event loop at once, as
the user meant it to, but it also ended that task, and every later ``await`` on the client waited
for ever for a publisher or a listener that no longer ran.

:func:`kept_alive` starts such a task again once the loop runs again, after mending what the
interrupt cut short (a publish round is sent again, answers popped but not read are read from
their stored results). The new task first closes the idle connections of the client's Redis
pools: one interrupted between sending a command and reading its reply went back to its pool
with that reply still to come, which the next command on it would have read as its own (seen:
a withdrawal read a stored result as its count, and its task ended on the ``TypeError``). A task
that ends on any other exception is logged and started again a second later, so no failure of
one round leaves the client deaf for good. ``asyncio.run`` itself turns the first Ctrl+C into a
cancellation of its main task, which never reaches these tasks.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine, Sequence
from typing import Any

import redis.asyncio

from ..connections import REDIS_ERRORS

__all__ = ["kept_alive"]

log = logging.getLogger("wkr_celery.client")

_INTERRUPTS = (KeyboardInterrupt, SystemExit)
#: Seconds before a task that ended on an error (not an interrupt) is started again.
RESTART_DELAY = 1.0


def kept_alive(run: Callable[[], Coroutine[Any, Any, None]], *, mend: Callable[[], None],
               closed: Callable[[], bool], replace: Callable[[asyncio.Task[None]], None],
               connections: Sequence[redis.asyncio.Redis], _fresh: bool = False
               ) -> asyncio.Task[None]:
    """A task running ``run()``; ended by an exception while the client is not ``closed()``,
    it is followed by a new one, handed to ``replace`` (whoever stops the tasks waits for that
    one), after ``mend()``; ``connections`` are the client's Redis clients."""
    task = asyncio.ensure_future(_after_reset(run, connections) if _fresh else run())

    def after(done: asyncio.Task[None]) -> None:
        if done.cancelled() or done.exception() is None or closed():
            return
        exc = done.exception()
        mend()
        again = lambda: replace(kept_alive(  # noqa: E731
            run, mend=mend, closed=closed, replace=replace, connections=connections,
            _fresh=True))
        if isinstance(exc, _INTERRUPTS):
            again()
            return
        log.error("%s of a wkr-celery client ended on %r; starting it again in %.0fs",
                  done.get_name(), exc, RESTART_DELAY, exc_info=exc)
        done.get_loop().call_later(RESTART_DELAY, lambda: None if closed() else again())

    task.add_done_callback(after)
    return task


async def _after_reset(run: Callable[[], Coroutine[Any, Any, None]],
                       connections: Sequence[redis.asyncio.Redis]) -> None:
    for client in connections:
        try:
            await client.connection_pool.disconnect(inuse_connections=False)
        except REDIS_ERRORS:
            pass
    await run()
