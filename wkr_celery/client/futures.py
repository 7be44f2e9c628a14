"""``TaskFuture``: what :meth:`WKRClient.encode <.client.WKRClient.encode>` returns.

A ``concurrent.futures.Future``, so it works wherever one does: ``concurrent.futures.wait``
and ``as_completed`` (answered, failed, past its deadline, or cancelled: each counts as done),
``add_done_callback``, ``asyncio.wrap_future``. Two differences from an executor's future:

* it is never ``running()``: the client cannot tell when a worker starts on a request, so
  ``cancel()`` succeeds until the answer comes, and withdraws the request (see :meth:`cancel`);
* a done callback runs on whichever thread settled the future: the caller's own (a lone
  request read by its ``result()``), or one of the client's I/O threads. A callback may send
  again (``encode``), but must not wait there for another answer of the same client: the
  thread it runs on may be the one that would read it. ``result()`` and ``exception()`` then
  raise ``WKRError`` saying so, rather than wait for ever.
"""

from __future__ import annotations

import time
from concurrent.futures import Future
from concurrent.futures._base import CANCELLED
from typing import TYPE_CHECKING, Any, NoReturn

from ..errors import WKRError

if TYPE_CHECKING:
    from .client import WKRClient
    from .protocol import Outgoing
    from .replies import Replies

__all__ = ["TaskFuture"]


class TaskFuture(Future[Any]):
    """The future :meth:`WKRClient.encode` returns: a ``concurrent.futures.Future`` that also
    names its request, so ``AsyncResult(future.task_id)`` finds the result too until it
    expires."""

    def __init__(self, task_id: str, *, replies: Replies | None = None,
                 client: WKRClient | None = None, request: Outgoing | None = None) -> None:
        super().__init__()
        self.task_id = task_id
        self._replies = replies
        self._client = client  # a client is not collected (and stopped) while its futures live
        self._request = request

    def cancel(self) -> bool:
        """Cancel, and withdraw the request: not sent if it has not gone out yet, taken back
        from the service's queue if no worker has fetched it yet (by the client's publisher
        thread, soon after), else predicted and its answer dropped. False once answered."""
        if not super().cancel():
            return False
        with self._condition:
            # No executor will call this for us: without it, wait() and as_completed() do not
            # count the future as done, nor wake a thread already waiting on it.
            if self._state == CANCELLED:
                self.set_running_or_notify_cancel()
        if self._client is not None and self._request is not None:
            self._client._withdraw(self._request)
        return True

    def __reduce__(self) -> NoReturn:
        # Sent to another process (a Pool's arguments or results, a queue), pickle failed on
        # the future's lock: "cannot pickle '_thread.RLock' object", naming neither the
        # future nor the way out.
        raise WKRError(f"a TaskFuture cannot be sent to another process (it is settled by the "
                       f"threads of the client that made it); send its task_id "
                       f"({self.task_id!r}: AsyncResult(task_id) reads the result in any "
                       f"process until it expires) or its result()")

    def set_result(self, result: Any) -> None:
        self._request = None  # answered: nothing to withdraw, and its body is not kept alive
        super().set_result(result)

    def set_exception(self, exception: BaseException | None) -> None:
        self._request = None
        super().set_exception(exception)

    def result(self, timeout: float | None = None) -> Any:
        return super().result(self._read_own_answer(timeout))

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return super().exception(self._read_own_answer(timeout))

    def _read_own_answer(self, timeout: float | None) -> float | None:
        """A lone request's caller pops its answer itself (:meth:`Replies.read_alone`): one
        thread hand-off less. Returns what is left of ``timeout`` for the usual wait."""
        if self._replies is None or self.done():
            return timeout
        if self._replies.reading_here():
            raise WKRError(
                f"request {self.task_id} is not answered yet, and this done callback runs on "
                "the thread that reads this client's answers, so waiting here would wait for "
                "ever; wait elsewhere, or chain with add_done_callback on this future")
        started = time.monotonic()
        self._replies.read_alone(self, timeout)
        if timeout is None:
            return None
        return max(0.0, timeout - (time.monotonic() - started))
