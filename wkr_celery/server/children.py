"""The supervisor's other children: the REST API and Flower beside the workers, and the
embedded redis-servers under them. Each is watched like a worker: when one dies, a log line
names it and it is started again after a :class:`~wkr_celery.processes.Backoff` delay."""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from ..errors import WKRError
from ..logs import LogRouter
from ..processes import Backoff, finished
from ..redis_embedded import EmbeddedRedis

__all__ = ["SideProcess", "WatchedRedis"]

log = logging.getLogger("wkr_celery.server")


@dataclass
class SideProcess:
    """A process beside the workers (``what``: "REST API", "Flower"), restarted when it dies."""

    what: str
    url: str
    launch: Callable[[], subprocess.Popen[bytes]]
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    failures: int = 0
    next_start: float = 0.0
    pump: threading.Thread | None = field(default=None, repr=False)

    def spawn(self, router: LogRouter | None) -> None:
        self.process = self.launch()
        self.started = time.monotonic()
        if router is not None and self.process.stdout is not None:
            self.pump = threading.Thread(target=router.pump, args=(self.process.stdout,),
                                         daemon=True, name=f"wkr-log-{self.what}")
            self.pump.start()
        log.info("%s on %s, pid %d", self.what, self.url, self.process.pid)

    def check(self, backoff: Backoff, router: LogRouter | None) -> None:
        """Reap it if it died (and schedule the restart); start it when due."""
        now = time.monotonic()
        proc = self.process
        if proc is not None and finished(proc) is not None:
            self.process = None
            if self.pump is not None:
                self.pump.join(1)
            self.failures, delay = backoff.after_death(self.failures, now - self.started)
            self.next_start = now + delay
            log.error("%s (pid %d) exited with code %s after %.1fs; restarting in %.1fs",
                      self.what, proc.pid, proc.returncode, now - self.started, delay)
        if self.process is None and now >= self.next_start:
            self.spawn(router)


@dataclass
class WatchedRedis:
    """An embedded redis-server the supervisor owns, started again on its port when it dies."""

    server: EmbeddedRedis
    started: float = field(default_factory=time.monotonic)
    failures: int = 0
    next_start: float = 0.0
    down: bool = False

    def check(self, backoff: Backoff) -> None:
        now = time.monotonic()
        code = None if self.down else self.server.exit_code()
        if code is not None:
            self.down = True
            self.failures, delay = backoff.after_death(self.failures, now - self.started)
            self.next_start = now + delay
            log.error("embedded Redis on 127.0.0.1:%d exited with code %s after %.1fs; "
                      "restarting it in %.1fs%s", self.server.port, code, now - self.started,
                      delay, " (AOF on: it replays what it had)" if self.server.persist else
                      " (no AOF: what it held is lost; waiting callers get RequestLost)")
        if self.down and now >= self.next_start:
            try:
                self.server.restart()
            except WKRError as exc:
                self.failures, delay = backoff.after_death(self.failures, 0.0)
                self.next_start = time.monotonic() + delay
                log.error("could not restart the embedded Redis on port %d (next try in "
                          "%.1fs): %s", self.server.port, delay, exc)
                return
            self.down, self.started = False, time.monotonic()
            log.info("embedded Redis on 127.0.0.1:%d restarted, pid %s", self.server.port,
                     self.server.pid)
