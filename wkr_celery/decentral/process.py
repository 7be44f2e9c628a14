"""The central's side of one unit: its slot (remote server, index) and the process filling it.

A :class:`Unit` outlives its processes: when one exits the slot keeps its counters and the
central starts the next process into it. Each :class:`UnitProcess` has a reader thread for the
unit's event pipe, so ``ready`` and ``calls`` are known without polling the process.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from typing import IO, Any

from .. import processes
from ..child_env import build_child_env
from ..logs import LogRouter
from .config import RemoteServer

__all__ = ["Unit", "UnitProcess", "spawn"]

log = logging.getLogger("wkr_celery.decentral")



class UnitProcess:
    """One running unit process and what it reported on its event pipe."""

    def __init__(self, popen: subprocess.Popen[bytes], events: IO[bytes],
                 pump: threading.Thread | None) -> None:
        self.popen = popen
        self.started = time.monotonic()
        self.ready = threading.Event()
        self.off = False
        self.calls = 0
        self.error = ""
        self.signalled = False
        self._pump = pump
        self._reader = threading.Thread(target=self._read, args=(events,), daemon=True,
                                        name=f"wkr-unit-events-{popen.pid}")
        self._reader.start()

    @property
    def pid(self) -> int:
        return self.popen.pid

    def _read(self, events: IO[bytes]) -> None:
        with events:
            for raw in events:
                try:
                    event: dict[str, Any] = json.loads(raw)
                except ValueError:
                    continue
                kind = event.get("event")
                if kind == "ready":
                    self.ready.set()
                elif kind == "calls":
                    self.calls = int(event.get("calls", 0))
                elif kind == "error":
                    self.error = str(event.get("error", ""))
                elif kind == "off":
                    self.off = True

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            try:
                self.popen.send_signal(sig)
            except ProcessLookupError:
                pass
        self.signalled = True

    def finish(self) -> None:
        """After exit: let the reader and log pump drain what the process wrote last."""
        self._reader.join(2)
        if self._pump is not None:
            self._pump.join(2)


@dataclass
class Unit:
    """A slot: the ``slot``-th unit of ``remote``; ``id`` stays across its restarts."""

    id: str
    remote: RemoteServer
    slot: int
    process: UnitProcess | None = None
    restarts: int = 0
    failures: int = 0
    next_start: float = 0.0
    last_delay: float = 0.0
    last_error: str = ""
    calls_before: int = 0
    retiring: bool = False
    restart_now: bool = False

    @property
    def calls(self) -> int:
        return self.calls_before + (self.process.calls if self.process else 0)

    def state(self, now: float) -> str:
        proc = self.process
        if proc is None:
            return "backoff" if self.next_start > now else "off"
        if proc.signalled:
            return "stopping"
        return "running" if proc.ready.is_set() else "starting"

    def snapshot(self, now: float) -> dict[str, Any]:
        proc = self.process
        return {
            "id": self.id, "remote": self.remote.as_list(), "slot": self.slot,
            "state": self.state(now), "pid": proc.pid if proc else None,
            "ready": bool(proc and proc.ready.is_set()), "calls": self.calls,
            "restarts": self.restarts, "failures": self.failures,
            "restart_in": round(max(0.0, self.next_start - now), 3) if proc is None else 0.0,
            "last_delay": self.last_delay, "last_error": self.last_error,
            "uptime": round(now - proc.started, 3) if proc else 0.0,
        }


def spawn(unit: Unit, worker_class: str, router: LogRouter | None,
          pythonpath: list[str]) -> UnitProcess:
    """Start a process for ``unit``; its stderr goes to the router when there is a log dir."""
    read_fd, write_fd = os.pipe()
    spec = {"worker_class": worker_class, "unit_id": unit.id, "remote": unit.remote.as_list(),
            "events_fd": write_fd}
    env = build_child_env(import_first=pythonpath)
    piped = router is not None
    try:
        popen = processes.spawn(
            [sys.executable, "-m", "wkr_celery.decentral.unit_main", json.dumps(spec)],
            env=env, pass_fds=(write_fd,), stdout=subprocess.PIPE if piped else None,
            stderr=subprocess.STDOUT if piped else None)
    except BaseException:
        os.close(read_fd)
        raise
    finally:
        os.close(write_fd)
    pump = None
    if router is not None and popen.stdout is not None:
        pump = threading.Thread(target=router.pump, args=(popen.stdout,), daemon=True,
                                name=f"wkr-unit-log-{popen.pid}")
        pump.start()
    return UnitProcess(popen, os.fdopen(read_fd, "rb"), pump)
