"""A request inside a worker, from fetch to stored result."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import RequestFailed

__all__ = ["Request", "Outcome"]


@dataclass(slots=True)
class Request:
    """One fetched message, decoded; ``error`` set means it is answered without predict."""

    id: int
    raw: bytes
    deaths: int
    task_id: str | None
    client_id: str | None
    deadline: float | None
    payload: Any
    error: RequestFailed | None
    received: float

    @property
    def suspect(self) -> bool:
        """Held by a worker that died: served alone so a crash blames only itself."""
        return self.deaths > 0


@dataclass(slots=True)
class Outcome:
    """A result, or an error with the worker's traceback text."""

    value: Any = None
    error: RequestFailed | None = None
    traceback: str | None = None
