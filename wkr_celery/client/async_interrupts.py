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
tasks is watched (:func:`bounded`, one timer per round), and one found waiting on a lock for
good is ended and started again as after an interrupt, on new pools. A task that ends on any
other exception is logged and started again a second later, so no failure of one round leaves
the client deaf for good. ``asyncio.run`` itself turns the first Ctrl+C into a cancellation
of its main task, which never reaches these tasks.
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

__all__ = ["bounded", "kept_alive"]

log = logging.getLogger("wkr_celery.client")

_INTERRUPTS = (KeyboardInterrupt, SystemExit)
#: Seconds before a task that ended on an error (not an interrupt) is started again.
RESTART_DELAY = 1.0
#: Seconds after which a round of a client's task still running is looked at (and every so
#: often after that): waiting on an ``asyncio.Lock`` that long, and still on the same wait
#: :data:`LOCK_RECHECK` seconds later, it counts as wedged: redis-py holds its pool lock for
#: moments (while it moves a connection between its lists). A round waiting on a socket is
#: left alone: its reads and connects have their own timeouts, and a slow round cut short
#: would be sent again, and cut again (seen with a bound on whole rounds).
LOCK_CHECK = 5.0
LOCK_RECHECK = 1.0

#: Tasks :func:`bounded` ended: started again as after an interrupt.
_OVERRAN: weakref.WeakSet[asyncio.Task[Any]] = weakref.WeakSet()


@contextmanager
def bounded() -> Iterator[None]:
    """Watch the current task while the block runs (one timer): found waiting on a lock for
    good (:data:`LOCK_CHECK`), it is cancelled and marked to be started again on new pools
    (:func:`kept_alive`): a lock an interrupt left held is released by nobody."""
    task = asyncio.current_task()
    assert task is not None
    watch = _LockWatch(task)
    try:
        yield
    finally:
        watch.timer.cancel()


class _LockWatch:
    """The timer of one :func:`bounded` block, and the lock wait it saw last."""

    __slots__ = ("task", "timer", "seen")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.seen: object = None
        self.timer = task.get_loop().call_later(LOCK_CHECK, self.check)

    def check(self) -> None:
        waiting = _lock_wait(self.task)
        if waiting is not None and waiting is self.seen:
            log.warning("%s waited over %.0fs on a lock (left held by an interrupt?); starting "
                        "it again with new connection pools", self.task.get_name(), LOCK_CHECK)
            _OVERRAN.add(self.task)
            self.task.cancel()
            return
        self.seen = waiting
        again = LOCK_RECHECK if waiting is not None else LOCK_CHECK
        self.timer = self.task.get_loop().call_later(again, self.check)


def _lock_wait(task: asyncio.Task[Any]) -> object:
    """The waiter future ``task`` awaits in an ``acquire`` of :mod:`asyncio.locks` (a
    ``Lock``, ``Semaphore``, ``Condition``), or None: its chain of awaiting coroutines,
    followed to the innermost. Not ``Event.wait``: the client's own events are woken on time
    (the publisher's also by a timer), and on Python 3.12 ``wait_for`` awaits one directly."""
    coro: Any = task.get_coro()
    while getattr(coro, "cr_await", None) is not None and hasattr(coro.cr_await, "cr_frame"):
        coro = coro.cr_await
    frame = getattr(coro, "cr_frame", None)
    if (frame is None or frame.f_code.co_filename != asyncio.locks.__file__
            or frame.f_code.co_name != "acquire"):
        return None
    return coro.cr_await


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
