"""``WKRDecentralizeCentral``: runs ``-num_client`` processing units per remote server.

One thread owns every unit: the main loop (:meth:`serve_forever`) ticks ten times a second,
takes commands from the inbox (the control channel's, or :meth:`command` in-process), restarts
units that died, answers commands whose change is done, and publishes the status. Commands
answer when their effect is real (units stopped, new units past ``get_model``), not when they
are received, so a script can chain them.

The units themselves are a :class:`~wkr_celery.decentral.pool.UnitPool`, which restarts a
unit whose ``do_work`` raised (the traceback is in ``<name>.err``) with a growing backoff.
"""

from __future__ import annotations

import argparse
import errno
import logging
import os
import queue
import signal
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from types import FrameType
from typing import Any

from ..clock import wall_time
from ..connections import redacted
from ..errors import ConfigError, WKRError
from ..logs import LogRouter, configure_stderr
from ..processes import on_stop_signals, port_holder
from ..redis_embedded import EmbeddedRedis, embedded_password
from ..worker_class import class_path, load_class
from .config import DecentralSettings, parse_remote_servers
from .control import ControlServer
from .http import StatusHTTPServer
from .pool import UnitPool
from .worker import WKRWorker

__all__ = ["WKRDecentralizeCentral", "COMMANDS"]

log = logging.getLogger("wkr_celery.decentral")

_TICK = 0.1
_PUBLISH_EVERY = 1.0
COMMANDS = ("status", "switch", "idle", "restart", "terminate")
#: Longest ``wait`` a command may ask for (a day): longer is a typo, not a plan.
MAX_WAIT = 24 * 3600.0


@dataclass
class _Command:
    id: str
    name: str
    args: dict[str, Any]
    wait: float
    deadline: float
    respond: Callable[[dict[str, Any]], None]


@dataclass
class _Pending:
    command: _Command
    done: Callable[[], bool]


class WKRDecentralizeCentral:
    """``WKRDecentralizeCentral(Worker, args).start()`` then ``serve_forever()`` or ``stop()``.

    ``args``: :class:`DecentralSettings`, the ``wkr-decentral-start`` flags as a list, or an
    ``argparse.Namespace`` from its parser.
    """

    def __init__(
        self,
        worker: type[WKRWorker] | str,
        args: DecentralSettings | Sequence[str] | argparse.Namespace | None = None,
        **overrides: Any,
    ) -> None:
        path, roots = (worker, []) if isinstance(worker, str) else class_path(worker)
        settings = _settings_from(args, path).replace(worker_class=path, **overrides)
        for root in roots:
            if root not in sys.path:
                sys.path.insert(0, root)
        load_class(path, WKRWorker)  # refused here, not in each unit
        self.settings = settings
        self.pool = UnitPool(settings.name, path, list(dict.fromkeys([os.getcwd(), *roots])))
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue()
        self.redis_servers: list[EmbeddedRedis] = []
        self.control: ControlServer | None = None
        self.http: StatusHTTPServer | None = None
        self.router: LogRouter | None = None
        self._pending: list[_Pending] = []
        self._terminating: list[_Command] = []
        self._stop_flag: str | None = None  # set from signal handlers: a plain attribute only
        self._stopped = False
        self._started_at = wall_time()
        self._snapshot: dict[str, Any] = {}

    # Start --------------------------------------------------------------------------------

    def start(self) -> WKRDecentralizeCentral:
        s = self.settings
        if s.log_dir:
            self.router = self.pool.router = LogRouter(s.log_dir, s.name)
            self.router.route_root()
        elif not logging.getLogger().handlers:
            configure_stderr()
        if not s.broker_url:
            password = embedded_password(None)  # found by the units through the index
            for port in dict.fromkeys([s.port, s.port_out]):
                server = EmbeddedRedis(port, password=password).start()
                self.redis_servers.append(server)
                log.info("%s Redis on 127.0.0.1:%d", "started" if server.owned else "reusing",
                         port)
        self.control = ControlServer(s.name, s.control_url, s.status_url, self.inbox,
                                     sentinel_master=s.sentinel_master)
        self.control.claim()
        self.control.start()
        if s.http_port:
            try:
                self.http = StatusHTTPServer(s.http_host, s.http_port, lambda: self._snapshot)
            except OSError as exc:
                held = (f"port {s.http_port} on {s.http_host} is taken by "
                        f"{port_holder(s.http_port)}; stop that process or choose another "
                        "-http_port" if exc.errno == errno.EADDRINUSE else str(exc))
                raise ConfigError(f"-http_port {s.http_port}: {held}") from exc
            self.http.start()
        self.pool.reconcile(s.remote_servers, s.num_client)
        self.pool.check()
        self._publish()
        log.info("decentralize %r: %d unit(s) of %s on %s; control %s%s", s.name,
                 len(self.pool.units), s.worker_class, [str(r) for r in s.remote_servers],
                 redacted(s.control_url), f", status {self.http.url}" if self.http else "")
        return self

    # Run ----------------------------------------------------------------------------------

    def serve_forever(self) -> None:
        """Supervise until terminated (command, :meth:`request_stop` or a signal), then stop."""
        last_publish = time.monotonic()
        while self._stop_flag is None:
            try:
                message = self.inbox.get(timeout=_TICK)
            except queue.Empty:
                message = None
            while message is not None:
                self._handle(message)
                try:
                    message = self.inbox.get_nowait()
                except queue.Empty:
                    message = None
            self.pool.check()
            self._answer_pending()
            self._snapshot = self.status()
            if time.monotonic() - last_publish >= _PUBLISH_EVERY:
                self._publish()
                last_publish = time.monotonic()
        self.stop(force=self._stop_flag == "force")

    def run(self) -> int:
        """start + serve_forever with the CLI's signals: SIGTERM, SIGINT and SIGHUP (the
        terminal closed) stop gracefully, a second SIGINT kills the units. Returns an exit
        code (1: could not start)."""
        interrupts = {"count": 0}

        def on_signal(signum: int, frame: FrameType | None) -> None:
            if signum == signal.SIGINT:
                interrupts["count"] += 1
            self.request_stop(force=interrupts["count"] > 1)

        if threading.current_thread() is threading.main_thread():
            on_stop_signals(on_signal)
        try:
            self.start()
        except WKRError as exc:
            log.error("decentralize %r could not start: %s", self.settings.name, exc)
            print(f"wkr-decentral-start: error: {exc}", file=sys.stderr, flush=True)
            self.stop(force=True)
            return 1
        print(f"wkr-decentral-start: {self.settings.name!r} running {len(self.pool.units)} "
              f"unit(s); control on {redacted(self.settings.control_url)}; Ctrl+C stops",
              file=sys.stderr, flush=True)
        self.serve_forever()
        return 0

    def request_stop(self, force: bool = False) -> None:
        """Ask :meth:`serve_forever` to stop; safe to call from a signal handler."""
        if force or self._stop_flag is None:
            self._stop_flag = "force" if force else "graceful"

    def command(self, name: str, wait: float = 30.0, **args: Any) -> Future[dict[str, Any]]:
        """Run a control command in-process; the future gets the same reply the CLI prints."""
        future: Future[dict[str, Any]] = Future()
        self.inbox.put({"id": uuid.uuid4().hex, "command": name, "args": args, "wait": wait,
                        "future": future})
        return future

    # Commands -----------------------------------------------------------------------------

    def _handle(self, message: dict[str, Any]) -> None:
        future = message.get("future")
        command_id = str(message.get("id"))
        if future is not None:
            respond: Callable[[dict[str, Any]], None] = future.set_result
        else:
            def respond(payload: dict[str, Any]) -> None:
                assert self.control is not None
                self.control.reply(command_id, payload)
        try:
            wait = _wait_of(message.get("wait"))
        except ConfigError as exc:
            log.error("refused command %s %.80r: %s", command_id, message.get("command"), exc)
            respond({"ok": False, "command": str(message.get("command")), "error": str(exc),
                     "status": self.status()})
            return
        args = message.get("args")
        command = _Command(command_id, str(message.get("command")),
                           dict(args) if isinstance(args, dict) else {}, wait,
                           time.monotonic() + wait, respond)
        if command.name not in COMMANDS:
            self._answer(command, False, error=f"unknown command {command.name!r}; "
                         f"known: {', '.join(COMMANDS)}")
            return
        log.info("command %s %s", command.name, command.args or "")
        try:
            done = getattr(self, f"_cmd_{command.name}")(command)
        except (WKRError, ValueError, TypeError) as exc:
            log.error("refused command %s %s: %s", command.name, command.args, exc)
            self._answer(command, False, error=str(exc))
            return
        except Exception as exc:  # a command must never take the central down
            log.exception("command %s failed", command.name)
            self._answer(command, False, error=f"{type(exc).__name__}: {exc}")
            return
        if done is not None:
            self._pending.append(_Pending(command, done))
            self._answer_pending()

    def _answer(self, command: _Command, ok: bool, *, error: str = "") -> None:
        payload: dict[str, Any] = {"ok": ok, "command": command.name, "status": self.status()}
        if error:
            payload["error"] = error
        command.respond(payload)

    def _answer_pending(self) -> None:
        now = time.monotonic()
        for pending in list(self._pending):
            if pending.done():
                self._pending.remove(pending)
                self._answer(pending.command, True)
            elif now >= pending.command.deadline:
                self._pending.remove(pending)
                self._answer(pending.command, False, error=(
                    f"{pending.command.name} not complete after {pending.command.wait:g}s; "
                    "see the units' states, and <name>.err"))

    def _cmd_status(self, command: _Command) -> Callable[[], bool]:
        return lambda: True

    def _cmd_switch(self, command: _Command) -> Callable[[], bool]:
        args = command.args
        changes: dict[str, Any] = {}
        if args.get("remote_servers") is not None:
            changes["remote_servers"] = parse_remote_servers(args["remote_servers"])
        if args.get("num_client") is not None:
            changes["num_client"] = args["num_client"]  # checked with the servers, capped
        if not changes:
            raise ConfigError("switch needs remote_servers, num_client or both")
        self.settings = s = self.settings.replace(**changes)
        pool = self.pool
        pool.reconcile(s.remote_servers, s.num_client)
        if pool.mode != "running":
            return pool.none_retiring
        ready = pool.all_ready()
        return lambda: pool.none_retiring() and ready()

    def _cmd_idle(self, command: _Command) -> Callable[[], bool]:
        if command.args.get("off"):
            self.pool.resume()
            return self.pool.all_ready()
        self.pool.idle()
        return self.pool.none_running

    def _cmd_restart(self, command: _Command) -> Callable[[], bool]:
        return self.pool.all_ready(self.pool.restart(force=bool(command.args.get("force"))))

    def _cmd_terminate(self, command: _Command) -> None:
        self._terminating.append(command)
        self.request_stop(force=bool(command.args.get("force")))

    # Status -------------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """What ``wkr-decentral-status`` prints and ``-http_port`` serves."""
        s = self.settings
        units = self.pool.snapshot()
        return {
            "name": s.name, "pid": os.getpid(), "worker_class": s.worker_class,
            "mode": self.pool.mode, "started": self._started_at,
            "uptime": round(wall_time() - self._started_at, 3), "updated": wall_time(),
            "num_client": s.num_client,
            "remote_servers": [r.as_list() for r in s.remote_servers],
            "control": redacted(s.control_url), "status_redis": redacted(s.status_url),
            "http": self.http.url if self.http else None,
            "totals": {
                "units": len(units),
                "running": sum(1 for u in units if u["state"] == "running"),
                "calls": sum(u["calls"] for u in units),
                "restarts": sum(u["restarts"] for u in units),
            },
            "units": units,
        }

    def _publish(self) -> None:
        self._snapshot = self.status()
        if self.control is not None:
            self.control.publish(self._snapshot)

    # Stop ---------------------------------------------------------------------------------

    def stop(self, force: bool = False) -> None:
        """Graceful: units finish the job in hand and call ``off_model``; force kills them."""
        if self._stopped:
            return
        self._stopped = True
        self.pool.stop_all(force, self.settings.stop_timeout)
        self._snapshot = self.status()
        for command in self._terminating:
            self._answer(command, True)
        for pending in self._pending:
            self._answer(pending.command, False, error="the central stopped")
        if self.http is not None:
            self.http.close()
        if self.control is not None:
            self.control.close()
        for server in self.redis_servers:
            server.stop()
        log.info("decentralize %r stopped", self.settings.name)
        if self.router is not None:
            self.router.close()

    def __enter__(self) -> WKRDecentralizeCentral:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _wait_of(value: Any) -> float:
    """A command's ``wait`` (30 s when not given): seconds from 0 to :data:`MAX_WAIT`. NaN or
    an infinity put the answer's deadline nowhere, so the command never timed out."""
    if value is None:
        return 30.0
    if type(value) not in (int, float) or not 0 <= value <= MAX_WAIT:
        raise ConfigError(f"wait {value!r} must be a number of seconds from 0 to {MAX_WAIT:g}")
    return float(value)


def _settings_from(args: DecentralSettings | Sequence[str] | argparse.Namespace | None,
                   path: str) -> DecentralSettings:
    if args is None:
        return DecentralSettings(worker_class=path)
    if isinstance(args, DecentralSettings):
        return args
    if isinstance(args, argparse.Namespace):
        return DecentralSettings(**vars(args))
    return DecentralSettings.from_args([path, *args])
