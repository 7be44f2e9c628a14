"""``WKRWorker``: the processing unit a user subclasses for decentralize mode."""

from __future__ import annotations

import logging
import threading
from typing import Any

from .config import RemoteServer

__all__ = ["WKRWorker"]


class WKRWorker:
    """Subclass this and override ``get_model``, ``do_work`` and ``off_model``.

    Each unit is its own process holding one instance. The framework calls, from one thread,
    ``get_model(ip, port, port_out)`` once with the unit's remote server, then
    ``do_work(model, logger)`` in a loop (do one job per call, and return soon when there is
    none, so a stop request is seen), and ``off_model(model)`` once when the unit stops, be it
    a stop request, a ``do_work`` exception or a shutdown.

    Before ``get_model`` the framework sets ``self.remote`` (the :class:`RemoteServer`, whose
    ``name`` is the service name when ``-remote_servers`` gave one) and ``self.unit_id``.
    """

    unit_id: str = "unit"
    remote: RemoteServer | None = None

    def bind(self, unit_id: str, remote: RemoteServer) -> None:
        """Called by the framework before ``get_model`` (so subclasses need no ``__init__``)."""
        self.unit_id = unit_id
        self.remote = remote
        self._stop = threading.Event()

    def get_model(self, ip: str, port: int, port_out: int) -> Any:
        """Connect to the service (e.g. a ``WKRClient``) and anything else a job needs."""
        raise NotImplementedError(f"{type(self).__name__} must override get_model")

    def do_work(self, model: Any, logger: logging.Logger) -> None:
        """Do one job; an exception stops this unit, which the central restarts."""
        raise NotImplementedError(f"{type(self).__name__} must override do_work")

    def off_model(self, model: Any) -> None:
        """Close what ``get_model`` opened; called once, also after errors."""

    @property
    def stop_requested(self) -> bool:
        """True once the unit was asked to stop; a long ``do_work`` may check it and return."""
        stop = getattr(self, "_stop", None)
        return stop is not None and stop.is_set()

    def request_stop(self) -> None:
        """Ask the loop to stop after the current ``do_work`` returns (the unit's SIGTERM)."""
        if getattr(self, "_stop", None) is None:
            self._stop = threading.Event()
        self._stop.set()

    def new_logger(self) -> logging.Logger:
        """A logger whose records go to ``<log_dir>/<name>.log`` (errors also to ``.err``)."""
        return logging.getLogger(f"wkr_celery.decentral.{self.unit_id}")
