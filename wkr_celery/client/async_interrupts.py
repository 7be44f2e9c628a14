"""What keeps the asyncio client's I/O tasks alive through a Ctrl+C in a notebook.

A notebook's event loop runs in the main thread, where the kernel's interrupt (SIGINT) raises
``KeyboardInterrupt`` in whatever code runs at that moment: often a step of one of the client's
own tasks (the publisher, the listener, a watch). The exception leaves the event loop at once, as
the user meant it to, but it also ended that task, and every later ``await`` on the client waited
for ever for a publisher or a listener that no longer ran.

:func:`kept_alive` starts such a task again once the loop runs again, after mending what the
interrupt cut short (a publish round is sent again, answers popped but not read are read from
their stored results). The new task first gives the client's Redis clients new pools
(:func:`~wkr_celery.connections.renew_pool`), closing the old ones' idle connections: one
interrupted between sending a command and reading its reply went back to its pool with that
reply still to come, which the next command on it would have read as its own (seen: a
withdrawal read a stored result as its count, and its task ended on the ``TypeError``); and an
interrupt inside the pool's own ``asyncio.Lock`` (its ``release``, say) left it held with
nobody to release it, so that every later command waited on it for ever: closing connections
frees no lock.

An interrupt can wedge a pool from a task that is not one of these (a cell's own command), and
a task of the client can be left waiting on a lock another one wedged: so each round of these
tasks is bounded (:func:`bounded`, one timer per round), and one that overruns is ended and
started again as after an interrupt, on new pools. A task that ends on any other exception is
logged and started again a second later, so no failure of one round leaves the client deaf for
good. ``asyncio.run`` itself turns the first Ctrl+C into a cancellation of its main task, which
never reaches these tasks.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import redis.asyncio

from ..connections import renew_pool

__all__ = ["bounded", "kept_alive", "round_limit"]

log = logging.getLogger("wkr_celery.client")

_INTERRUPTS = (KeyboardInterrupt, SystemExit)
#: Seconds before a task that ended on an error (not an interrupt) is started again.
RESTART_DELAY = 1.0
#: Seconds a round of a client's task may take beyond its ``connect_timeout`` before it counts
#: as wedged: past the longest a round can take against a Redis that is away (redis-py's own
#: retries of a connect or a read that times out included).
ROUND_MARGIN = 60.0

#: Tasks :func:`bounded` ended: started again as after an interrupt.
_OVERRAN: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


def round_limit(connect_timeout: float) -> float:
    """The bound of one round of a client's task whose ``connect_timeout`` this is."""
    return connect_timeout + ROUND_MARGIN


@contextmanager
def bounded(seconds: float) -> Iterator[None]:
    """Cancel the current task if the block takes over ``seconds``, and mark it to be started
    again (:func:`kept_alive`): a round that waits on a lock an interrupt left held would wait
    for ever, and nothing else can tell it apart from a slow one."""
    task = asyncio.current_task()
    assert task is not None
    timer = task.get_loop().call_later(seconds, _overran, task, seconds)
    try:
        yield
    finally:
        timer.cancel()


def _overran(task: asyncio.Task[Any], seconds: float) -> None:
    log.warning("a round of %s took over %.0fs (left waiting by an interrupt?); starting it "
                "again with new connection pools", task.get_name(), seconds)
    _OVERRAN.add(task)
    task.cancel()


def kept_alive(run: Callable[[], Coroutine[Any, Any, None]], *, mend: Callable[[], None],
               closed: Callable[[], bool], replace: Callable[[asyncio.Task[None]], None],
               connections: Sequence[redis.asyncio.Redis], _fresh: bool = False
               ) -> asyncio.Task[None]:
    """A task running ``run()``; ended by an exception, or a round of it by :func:`bounded`,
    while the client is not ``closed()``, it is followed by a new one, handed to ``replace``
    (whoever stops the tasks waits for that one), after ``mend()``; ``connections`` are the
    client's Redis clients, given new pools by the new task."""
    task = asyncio.ensure_future(_after_reset(run, connections) if _fresh else run())

    def after(done: asyncio.Task[None]) -> None:
        overran = done in _OVERRAN
        if closed() or (done.cancelled() and not overran):
            return
        exc = None if done.cancelled() else done.exception()
        if exc is None and not overran:
            return
        mend()
        again = lambda: replace(kept_alive(  # noqa: E731
            run, mend=mend, closed=closed, replace=replace, connections=connections,
            _fresh=True))
        if overran or isinstance(exc, _INTERRUPTS):
            again()
            return
        log.error("%s of a wkr-celery client ended on %r; starting it again in %.0fs",
                  done.get_name(), exc, RESTART_DELAY, exc_info=exc)
        done.get_loop().call_later(RESTART_DELAY, lambda: None if closed() else again())

    task.add_done_callback(after)
    return task


async def _after_reset(run: Callable[[], Coroutine[Any, Any, None]],
                       connections: Sequence[redis.asyncio.Redis]) -> None:
    for client in {id(client): client for client in connections}.values():
        await renew_pool(client)
    await run()
