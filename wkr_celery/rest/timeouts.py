"""Slow clients cannot hold the API's connections: a deadline on every request head.

uvicorn closes a connection that stays idle ``timeout_keep_alive`` seconds after a response,
but any byte received cancels that timer, and nothing limits how long a request head may take
to arrive: a client that sends a header line now and then (slowloris) keeps its connection, and
its memory, for ever. :func:`head_timeout_protocol` gives uvicorn's h11 protocol a deadline:
from the moment a connection opens, and again after each response, the next request head must
be complete within ``seconds`` or the connection is closed. The body has its own deadline, kept
by :func:`~wkr_celery.rest.encoding.read_body` (``408`` when it passes).

The answer has one too. uvicorn waits, with no deadline, for a full socket to drain before it
writes more: a client that sends a request and never reads its answer held the connection, and
the whole answer in the API's memory (the transport buffers what the socket does not take), for
ever. Once the transport stops taking writes (``pause_writing``), the client must take some of
the answer within ``seconds`` or the connection is aborted; any progress (``resume_writing``)
starts the clock again, so a slow but reading client is never cut off.
"""

from __future__ import annotations

import asyncio
from typing import Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol

__all__ = ["head_timeout_protocol", "KEEP_ALIVE_SECONDS", "MAX_HEAD_BYTES"]

#: Seconds an idle keep-alive connection stays open after a response (uvicorn's default).
KEEP_ALIVE_SECONDS = 5
#: Largest request head (request line and headers) accepted; h11's default.
MAX_HEAD_BYTES = 16 * 1024


def head_timeout_protocol(seconds: float) -> type[H11Protocol]:
    """uvicorn's h11 protocol, closing connections whose request head is not in by ``seconds``
    (or that take none of their answer for ``seconds``)."""
    return type("HeadTimeoutH11Protocol", (DeadlineH11Protocol,), {"seconds": seconds})


class DeadlineH11Protocol(H11Protocol):
    """The protocol of :func:`head_timeout_protocol`, whose subclass sets :attr:`seconds`."""

    seconds: float = 30.0
    _head_timer: asyncio.TimerHandle | None = None
    _write_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._arm_head_timer()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)
        if self.conn.their_state is not h11.IDLE and self._request_in_app():
            self._cancel_head_timer()  # a whole head arrived; the app owns the request now

    def on_response_complete(self) -> None:
        super().on_response_complete()  # may start a pipelined request already received
        if not self.transport.is_closing() and not self._request_in_app():
            self._arm_head_timer()

    def pause_writing(self) -> None:
        super().pause_writing()
        if self._write_timer is None:
            self._write_timer = self.loop.call_later(self.seconds, self._write_timed_out)

    def resume_writing(self) -> None:
        self._cancel_write_timer()
        super().resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_write_timer()
        super().connection_lost(exc)

    def _request_in_app(self) -> bool:
        return self.cycle is not None and not self.cycle.response_complete

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(self.seconds, self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_write_timer(self) -> None:
        if self._write_timer is not None:
            self._write_timer.cancel()
            self._write_timer = None

    def _write_timed_out(self) -> None:
        self._write_timer = None
        if not self.transport.is_closing():
            self.logger.info("closed a connection that took none of its answer for %gs",
                             self.seconds)
        self.transport.abort()  # close() would wait, for ever, to send what is buffered

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing() and not self._request_in_app():
            self.logger.info("closed a connection whose request head took over %gs",
                             self.seconds)
            self.transport.close()
