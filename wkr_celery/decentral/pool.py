"""``UnitPool``: the central's units, kept matching ``remote_servers`` × ``num_client``.

Only the central's main loop calls it, so no lock guards the units. A unit that exits on its
own (its ``do_work`` raised, or it crashed) is restarted after a
:class:`~wkr_celery.processes.Backoff` delay, the supervisor's rule: 0.5 s, doubling while it
keeps failing within a minute of starting, up to 30 s, and back to 0.5 s after a healthy run; a
unit that was told to stop is not counted as a failure.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..logs import LogRouter
from ..processes import Backoff, finished, reap_orphans, wait_or_kill
from .config import RemoteServer
from .process import Unit, UnitProcess, spawn

__all__ = ["UnitPool", "MODES"]

log = logging.getLogger("wkr_celery.decentral")

#: ``running``: units are kept alive; ``idle``: standby, none run; ``stopping``: shutting down.
MODES = ("running", "idle", "stopping")


class UnitPool:
    """Starts, watches and stops the unit processes of one central."""

    #: Restart delays of units that exit on their own.
    backoff = Backoff()

    def __init__(self, name: str, worker_class: str, pythonpath: Sequence[str]) -> None:
        self.name = name
        self.worker_class = worker_class
        self.pythonpath = list(pythonpath)
        self.router: LogRouter | None = None
        self.mode = "running"
        self.units: list[Unit] = []
        self._seq = 0

    # Shape --------------------------------------------------------------------------------

    def reconcile(self, servers: Sequence[RemoteServer], num_client: int) -> None:
        """Units whose (server, slot) stays keep running; extras stop; missing ones are added."""
        wanted: list[tuple[RemoteServer, int]] = []
        counts: dict[RemoteServer, int] = {}
        for remote in servers:
            for _ in range(num_client):
                wanted.append((remote, counts.get(remote, 0)))
                counts[remote] = counts.get(remote, 0) + 1
        have = {(u.remote, u.slot): u for u in self.units if not u.retiring}
        for key, unit in have.items():
            if key not in wanted:
                unit.retiring = True
                if unit.process is not None:
                    unit.process.signal(signal.SIGTERM)
        for remote, slot in wanted:
            if (remote, slot) not in have:
                self._seq += 1
                self.units.append(Unit(f"{self.name}-{self._seq}", remote, slot))

    def idle(self) -> None:
        self.mode = "idle"
        self.signal_all(signal.SIGTERM)

    def resume(self) -> None:
        self.mode = "running"
        for unit in self.units:
            unit.next_start, unit.failures = 0.0, 0

    def restart(self, force: bool) -> frozenset[int]:
        """Stop every unit and start it again at once; returns the old processes' ids."""
        self.mode = "running"
        old = frozenset(id(u.process) for u in self.units if u.process is not None)
        for unit in self.units:
            unit.failures, unit.next_start = 0, 0.0
            if unit.process is not None:
                unit.restart_now = True
                unit.process.signal(signal.SIGKILL if force else signal.SIGTERM)
        return old

    # Conditions commands wait for ---------------------------------------------------------

    def all_ready(self, old: frozenset[int] = frozenset()) -> Callable[[], bool]:
        """Every unit runs a process (not one of ``old``) that is past ``get_model``."""
        def done() -> bool:
            return all(u.process is not None and id(u.process) not in old
                       and u.process.ready.is_set() for u in self.units)
        return done

    def none_running(self) -> bool:
        return all(u.process is None for u in self.units)

    def none_retiring(self) -> bool:
        return not any(u.retiring for u in self.units)

    # Supervision --------------------------------------------------------------------------

    def check(self) -> None:
        """Reap exited units, drop retired ones, start those due (called every tick); as a
        container's PID 1, reap the orphans it was handed too."""
        reap_orphans()
        now = time.monotonic()
        for unit in list(self.units):
            proc = unit.process
            if proc is not None and finished(proc.popen) is not None:
                self._on_exit(unit, proc)
            if unit.process is not None:
                continue
            if unit.retiring:
                self.units.remove(unit)
            elif self.mode == "running" and now >= unit.next_start:
                self._spawn(unit)

    def _spawn(self, unit: Unit) -> None:
        try:
            unit.process = spawn(unit, self.worker_class, self.router, self.pythonpath)
        except OSError as exc:
            log.error("could not start unit %s: %s", unit.id, exc)
            unit.next_start = time.monotonic() + self.backoff.most
            return
        log.info("unit %s started, pid %d, remote %s", unit.id, unit.process.pid, unit.remote)

    def _on_exit(self, unit: Unit, proc: UnitProcess) -> None:
        proc.finish()
        unit.process = None
        unit.calls_before += proc.calls
        code = proc.popen.returncode
        if proc.error:
            unit.last_error = proc.error
        if unit.restart_now:
            unit.restart_now = False
            unit.next_start = 0.0
        if proc.signalled or unit.retiring or self.mode != "running":
            log.info("unit %s (pid %d) stopped with code %s", unit.id, proc.pid, code)
            return
        lived = time.monotonic() - proc.started
        unit.failures, delay = self.backoff.after_death(unit.failures, lived)
        unit.restarts += 1
        unit.last_delay = delay
        unit.next_start = time.monotonic() + delay
        log.error("unit %s (pid %d) exited with code %s after %.1fs (%s); restarting in %.1fs",
                  unit.id, proc.pid, code, lived, proc.error or "no error reported", delay)

    def signal_all(self, sig: int) -> None:
        for unit in self.units:
            if unit.process is not None:
                unit.process.signal(sig)

    def stop_all(self, force: bool, timeout: float) -> None:
        """Graceful: each unit finishes its job and calls ``off_model``; past ``timeout``, kill."""
        self.mode = "stopping"
        self.signal_all(signal.SIGKILL if force else signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for unit in self.units:
            proc = unit.process
            if proc is None:
                continue
            wait_or_kill(proc.popen, deadline, f"unit {unit.id}")
            self._on_exit(unit, proc)

    def snapshot(self) -> list[dict[str, Any]]:
        now = time.monotonic()
        return [u.snapshot(now) for u in self.units]
