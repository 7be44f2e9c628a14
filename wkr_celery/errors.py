"""Every error wkr-celery raises, under one root.

Callers catch :class:`WKRError` for "anything from the framework", or a branch for a decision
("retry later", "fix the input", "fix the deployment")::

    WKRError
    ├── ConfigError              a flag, setting or environment variable is wrong (also ValueError)
    ├── ServiceUnavailable       nothing to talk to: no broker, no live worker
    │   └── VersionMismatch      the service runs another wkr-celery version
    ├── InputError               the caller's input cannot be sent (also ValueError)
    │   └── PayloadTooLarge      over the service's payload limit
    │       └── RequestTooLarge  …refused by the worker (also a RequestFailed)
    ├── NotRevocable             a queued task cannot be taken back (``DELETE /tasks/<id>``)
    │   ├── UnknownTask          this process did not queue it (or forgot it)
    │   ├── TaskStarted          a worker holds it; it will finish
    │   └── TaskFinished         its result is stored already
    └── RequestFailed            the service answered this one request with an error
        ├── PredictError         ``predict`` raised for this input (carries the worker traceback)
        ├── BatchContractError   ``predict`` returned the wrong number of results
        ├── DecodeError          the worker could not decode the input
        ├── RequestTooLarge      the input was over ``-max_payload`` (see above)
        ├── ResultTooLarge       ``predict``'s result was over ``-max_result``
        ├── InvalidInput         the input decoded but is not what the service takes
        ├── DeadlineExceeded     the request's deadline passed before it was answered
        ├── ServiceOverloaded    the queue is at its cap; retry later
        ├── PoisonInput          the input killed worker processes too many times
        └── RequestLost          no answer will come: a Redis restarted empty or went away

Errors that travel from worker to client are stored in Celery's own result format
(``exc_type``/``exc_message``/``exc_module``), so ``AsyncResult.get()`` raises these same classes.
"""

from __future__ import annotations

__all__ = [
    "WKRError",
    "ConfigError",
    "ServiceUnavailable",
    "VersionMismatch",
    "InputError",
    "PayloadTooLarge",
    "NotRevocable",
    "UnknownTask",
    "TaskStarted",
    "TaskFinished",
    "RequestFailed",
    "PredictError",
    "BatchContractError",
    "DecodeError",
    "RequestTooLarge",
    "ResultTooLarge",
    "InvalidInput",
    "DeadlineExceeded",
    "ServiceOverloaded",
    "PoisonInput",
    "RequestLost",
    "remote_error",
]


class WKRError(Exception):
    """Root of every wkr-celery error."""


class ConfigError(WKRError, ValueError):
    """A setting is unknown or invalid; the message names it and what it accepts."""


class ServiceUnavailable(WKRError, ConnectionError):
    """The broker cannot be reached, or no worker of the service is alive."""


class VersionMismatch(ServiceUnavailable):
    """Client and service run incompatible wkr-celery versions."""


class InputError(WKRError, ValueError):
    """The caller's input was refused before it was sent."""


class PayloadTooLarge(InputError):
    """The encoded input is over the service's payload limit."""


class NotRevocable(WKRError):
    """A task cannot be taken back from the queue; the subclass says why."""


class UnknownTask(NotRevocable):
    """The task was not queued by this process, or its envelope was forgotten: only the exact
    envelope can be removed from the queue."""


class TaskStarted(NotRevocable):
    """A worker already holds the task; it will finish and store its result."""


class TaskFinished(NotRevocable):
    """The task's result is stored already."""


class RequestFailed(WKRError):
    """The service answered this request with an error.

    ``remote_traceback`` holds the worker's traceback text when there is one.
    """

    def __init__(self, message: str = "", remote_traceback: str | None = None) -> None:
        super().__init__(message)
        self.remote_traceback = remote_traceback


class PredictError(RequestFailed):
    """``predict`` raised while processing this input."""


class BatchContractError(RequestFailed):
    """``predict`` returned a different number of results than it was given inputs."""


class DecodeError(RequestFailed):
    """The worker could not decode this input with the service's protocol."""


class RequestTooLarge(PayloadTooLarge, RequestFailed):
    """A worker refused this input, undecoded: its encoded size is over ``-max_payload``.

    The client refuses such inputs before sending; this is what a producer that did not check
    (a plain Celery ``send_task``, a script pushing onto the queue) gets back. It is both a
    :class:`PayloadTooLarge` and a :class:`RequestFailed`, so either ``except`` catches it.
    """


class ResultTooLarge(RequestFailed):
    """``predict``'s result for this input encodes to more than ``-max_result`` bytes."""


class InvalidInput(RequestFailed):
    """The input decoded, but its type, shape or dtype is not what the service takes."""


class DeadlineExceeded(RequestFailed, TimeoutError):
    """The request's deadline passed before a result was produced."""


class ServiceOverloaded(RequestFailed):
    """The service's queue is at its cap (``-max_queue``); retry later."""


class PoisonInput(RequestFailed):
    """The input was in flight each time a worker process died, too many times."""


class RequestLost(RequestFailed):
    """No answer to this request will come: a Redis restarted without persistence lost it (or
    its answer), or stayed unreachable past ``connect_timeout``. Send it again."""


_REMOTE_TYPES: dict[str, type[RequestFailed]] = {
    cls.__name__: cls
    for cls in (
        RequestFailed,
        PredictError,
        BatchContractError,
        DecodeError,
        RequestTooLarge,
        ResultTooLarge,
        InvalidInput,
        DeadlineExceeded,
        ServiceOverloaded,
        PoisonInput,
        RequestLost,
    )
}


def remote_error(exc_type: str, message: str, remote_traceback: str | None = None) -> RequestFailed:
    """Rebuild an error that a worker stored, by name, without importing anything it names.

    Unknown names (e.g. a result stored by a plain Celery task) become :class:`RequestFailed`
    with the original type name kept in the message.
    """
    cls = _REMOTE_TYPES.get(exc_type)
    if cls is None:
        return RequestFailed(f"{exc_type}: {message}", remote_traceback)
    return cls(message, remote_traceback)
