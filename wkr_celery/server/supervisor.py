"""``WKRServer``: starts Redis when embedded, one Celery worker process per model copy, and keeps
them alive.

Each worker is ``celery -A wkr_celery worker`` in its own process, given its settings, id and
device through the environment (:class:`~.worker_slot.WorkerProcessEnv`); it pins itself to that
device before it imports the model class (:mod:`.bootstep`).
When one dies, the supervisor requeues what it held at once (the requests that were in predict
count a death against them, the rest go back untouched), records why it died where clients look
(so a client of a crash-looping service is told the worker's error), then restarts it with a
:class:`~wkr_celery.processes.Backoff` that grows while it keeps dying young and is forgiven
after a healthy run. The embedded redis-servers, the REST API and Flower are watched the same
way (:mod:`.children`).

Everything a worker writes to its temporary directory lives under the supervisor's run
directory (``/tmp/wkr-<name>-run-*``), removed when the worker dies, at stop, and, for a
supervisor that was killed, by the next start.
"""

from __future__ import annotations

import argparse
import functools
import logging
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import redis

from .. import scripts
from ..broker import RequestQueue, ResultStore, ServiceRegistry
from ..child_env import build_child_env
from ..config import Settings, settings_from
from ..connections import REDIS_ERRORS, explain, redacted
from ..errors import ServiceUnavailable
from ..keys import ServiceKeys
from ..logs import LogRouter, configure_stderr
from ..processes import (
    Backoff,
    clean_stale_dirs,
    finished,
    owned_temp_dir,
    reap_orphans,
    send,
    spawn,
    wait_or_kill,
)
from ..redis_embedded import EmbeddedRedis, embedded_password
from ..rest import extras
from ..worker_class import class_path, load_class
from .children import SideProcess, WatchedRedis
from .elastic import Elastic
from .exits import ExitReasons
from .hardworker import WKRHardWorker
from .info_owner import new_deploy
from .leftovers import fail_queued, unlist_if_unserved, wait_taken
from .worker_slot import WorkerProcess

__all__ = ["WKRServer", "WorkerProcess"]

log = logging.getLogger("wkr_celery.server")

_CHECK_SECONDS = 0.1
_THREAD_POOL_VARIABLES = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")
_FAILURE_TTL = 600  # seconds a worker's last failure stays readable for clients
_TAKE_SECONDS = 3.0  # how long a stop waits for clients to take their RequestLost answers


class WKRServer:
    """Runs a service: ``WKRServer(Worker, args).start()`` then ``serve_forever()`` or ``stop()``,
    from any thread (``asyncio.to_thread`` too): children are forked by a thread of their own
    that lives as long as the process (:func:`~wkr_celery.processes.spawn`)."""

    #: Restart delays of every child (workers, Redis, REST, Flower).
    backoff = Backoff()

    def __init__(
        self,
        worker: type[WKRHardWorker] | str,
        args: Settings | argparse.Namespace | None = None,
        **overrides: Any,
    ) -> None:
        settings = settings_from(args).replace(**overrides)
        path, roots = (worker, []) if isinstance(worker, str) else class_path(worker)
        for root in roots:  # the folder of a script serving its own class, here and in workers
            if root not in sys.path:
                sys.path.insert(0, root)
        self._import_first = list(dict.fromkeys([os.getcwd(), *roots]))
        self.settings = settings.replace(worker_class=path)
        self.worker_class = load_class(path, WKRHardWorker)
        self.keys = ServiceKeys(self.settings.name)
        self.deployed = ""  # names this deploy in its workers: see start(), .info_owner
        self.workers = [WorkerProcess(index=i, device_id=self.settings.device_for(i))
                        for i in range(self.settings.num_worker)]
        self.redis_servers: list[EmbeddedRedis] = []
        self._redis_watch: list[WatchedRedis] = []
        self.extras: list[SideProcess] = []
        self.router: LogRouter | None = None
        self.queue: RequestQueue | None = None
        self.registry: ServiceRegistry | None = None
        self.elastic: Elastic | None = None
        self._exits = ExitReasons()
        # A plain flag, not an Event: the CLI's signal handler sets it, and Event.set() in a
        # handler deadlocks when the signal lands while the main thread holds the Event's own
        # lock inside wait() (seen in CI: a SIGTERM left the service running until killed).
        self._stop_requested = False
        self._stopped = False
        clean_stale_dirs(f"wkr-{self.settings.name}-")  # left by a killed supervisor or worker
        self._run_dir = owned_temp_dir(f"wkr-{self.settings.name}-run-")

    # Start --------------------------------------------------------------------------------

    def start(self) -> WKRServer:
        s = self.settings
        if s.log_dir:
            self.router = LogRouter(s.log_dir, s.name)
            self.router.route_root()
        elif not logging.getLogger().handlers:
            configure_stderr()
        extras.refuse_taken_ports(s)  # before anything starts
        self._start_redis()
        s = self.settings  # with the embedded Redis's password, from here on
        broker = s.connect_broker()
        self.queue = RequestQueue(broker, self.keys)
        self.registry = ServiceRegistry(broker, self.keys)
        try:
            broker.ping()
            self.deployed = new_deploy(broker)
            # Every broker step is a script: a Redis user without scripting (an ACL, or a
            # managed Redis) is said here in one line, not by workers dying one after another.
            broker.script_load(scripts.FETCH)
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(f"broker {redacted(s.broker)}: {explain(exc)}") from exc
        except redis.ResponseError as exc:
            raise ServiceUnavailable(
                f"broker {redacted(s.broker)} refuses a command the service needs: {exc}"
            ) from exc
        if s.num_worker_max > s.num_worker:
            self.elastic = Elastic(s, self.queue, self.registry)
        for slot in self.workers:
            self._spawn(slot)
        self._start_extras()
        log.info("service %r: %d worker(s) on devices %s, broker %s, results %s",
                 s.name, s.num_worker, [w.device_id for w in self.workers],
                 redacted(s.broker), redacted(s.backend))
        return self

    def _start_redis(self) -> None:
        s = self.settings
        if s.broker_url:
            return
        persist = self._persist()
        password = embedded_password(s.data_dir or None, s.redis_password)
        # Settings.broker/backend carry it from here on: Celery, the workers, REST and Flower.
        self.settings = s = s.replace(redis_password=password)
        ports = [s.port_in] if s.port_out == s.port_in or s.result_url else [s.port_in, s.port_out]
        for port in ports:
            server = EmbeddedRedis(port, data_dir=s.data_dir or None, persist=persist,
                                   password=password).start()
            self.redis_servers.append(server)
            self._redis_watch.append(WatchedRedis(server))
            log.info("started Redis on 127.0.0.1:%d, pid %s%s", port, server.pid,
                     " (AOF on)" if persist else "")

    def _persist(self) -> bool:
        """Whether the embedded Redis keeps an append-only file (survives a stop)."""
        s = self.settings
        return s.redis_persist == "on" or (s.redis_persist == "auto" and bool(s.data_dir))

    def _start_extras(self) -> None:
        """Processes beside the workers (REST API, Flower), when their ports are given."""
        s = self.settings
        piped = self.router is not None
        sides = extras.rest_processes(s, piped=piped) if s.http_port else []
        if s.flower_port:
            launch = functools.partial(extras.start, extras.flower_command(s), s, piped=piped)
            sides.append(SideProcess("Flower", f"http://127.0.0.1:{s.flower_port}", launch))
        for side in sides:
            side.spawn(self.router)
            self.extras.append(side)

    def _spawn(self, slot: WorkerProcess) -> None:
        s = self.settings
        told = slot.prepare(f"{s.name}.{slot.index}.{uuid.uuid4().hex[:8]}", self._run_dir,
                            self.deployed)
        env = build_child_env(import_first=self._import_first, settings=s, extra=told)
        for variable in _THREAD_POOL_VARIABLES:
            # One math thread per worker unless the user says otherwise: several workers (plus
            # Redis and clients) each spinning a core-sized BLAS pool oversubscribe the CPU.
            env.setdefault(variable, "1")
        command = [sys.executable, "-m", "celery", "-A", "wkr_celery", "--quiet", "worker",
                   "--pool", "solo", "--concurrency", "1", "-Q", self.keys.control_queue,
                   "-n", f"wkr.{s.name}.{slot.index}@%h", "--without-gossip",
                   "--without-mingle", "--loglevel", "INFO"]
        piped = self.router is not None
        slot.process = spawn(command, env=env, stdout=subprocess.PIPE if piped else None,
                             stderr=subprocess.STDOUT if piped else None)
        slot.started = time.monotonic()
        if piped and self.router is not None and slot.process.stdout is not None:
            slot.pump = threading.Thread(target=self.router.pump, args=(slot.process.stdout,),
                                         daemon=True, name=f"wkr-log-{slot.index}")
            slot.pump.start()
        log.info("worker %d (%s) started, pid %d, device %d", slot.index, slot.worker_id,
                 slot.process.pid, slot.device_id)

    # Run ----------------------------------------------------------------------------------

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until every worker has loaded its model and sent a heartbeat."""
        assert self.registry is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            live = self.registry.live_workers()
            if all(w.worker_id in live for w in self.workers):
                return
            self._check_children()
            time.sleep(_CHECK_SECONDS)
        raise ServiceUnavailable(f"service {self.settings.name!r}: workers not ready after "
                                 f"{timeout:.0f}s; see the log")

    def serve_forever(self, on_stop: Callable[[], None] | None = None) -> None:
        """Supervise until :meth:`request_stop` (the CLI's SIGTERM/SIGINT handler), then stop.
        ``on_stop`` runs first, on this thread: the CLI tells the terminal, which a signal
        handler must not do (printing or logging there can raise, or wait on a lock the
        interrupted thread holds)."""
        while not self._stop_requested:
            time.sleep(_CHECK_SECONDS)
            if not self._stop_requested:
                self._check_children()
        if on_stop is not None:
            on_stop()
        self.stop()

    def request_stop(self) -> None:
        """Ask :meth:`serve_forever` to stop within ``_CHECK_SECONDS``; takes no lock, so it
        is safe in a signal handler."""
        self._stop_requested = True

    def _check_children(self) -> None:
        reap_orphans()  # as a container's PID 1: orphans it was handed
        for watch in self._redis_watch:
            watch.check(self.backoff)
        for side in self.extras:
            side.check(self.backoff, self.router)
        now = time.monotonic()
        for slot in list(self.workers):
            proc = slot.process
            if proc is not None and finished(proc) is not None:
                if slot.retiring:
                    self._retired(slot, proc.returncode)
                    continue
                self._on_death(slot, proc.returncode)
            if slot.process is None and now >= slot.next_start and not self._stop_requested:
                self._spawn(slot)
        if self.elastic is not None and not self._stop_requested:
            decision = self.elastic.tick(now, self.workers)
            if decision is not None and decision.change > 0:
                self._grow(decision.reason)
            elif decision is not None:
                self._retire(decision.reason)

    # Elastic workers (-num_worker_max) ----------------------------------------------------

    def _grow(self, reason: str) -> None:
        index = max(slot.index for slot in self.workers) + 1
        slot = WorkerProcess(index=index, device_id=self.settings.device_for(index))
        self.workers.append(slot)
        log.info("adding worker %d on device %d: %s", index, slot.device_id, reason)
        self._spawn(slot)

    def _retire(self, reason: str) -> None:
        """The newest added worker stops gracefully: its batch finishes, its buffer goes back."""
        extra = [s for s in self.workers if s.index >= self.settings.num_worker
                 and s.process is not None and not s.retiring]
        if not extra:
            return
        slot = max(extra, key=lambda s: s.index)
        slot.retiring = True
        log.info("retiring worker %d (%s): %s", slot.index, slot.worker_id, reason)
        send(slot.process, signal.SIGTERM)

    def _retired(self, slot: WorkerProcess, code: int) -> None:
        if code != 0:  # requeue whatever it still held, as for any death
            self._on_death(slot, code, stopping=True)
        else:
            slot.process = None
            slot.clean_up()
        self.workers.remove(slot)
        log.info("worker %d retired (exit code %s)", slot.index, code)

    def _on_death(self, slot: WorkerProcess, code: int, stopping: bool = False) -> None:
        blamed = slot.in_predict()
        failure = slot.start_failure()
        lived = time.monotonic() - slot.started
        slot.process = None
        if slot.pump is not None:
            slot.pump.join(1)
        requeued = 0
        if self.queue is not None:
            try:
                requeued = self.queue.requeue_dead(slot.worker_id, blamed)
            except REDIS_ERRORS as exc:  # the sweep of a live worker requeues them later
                log.error("could not requeue worker %s's requests now: %s", slot.worker_id, exc)
        slot.clean_up()
        ended = self._exits.explain(code)  # -9 from the OOM killer says so
        if stopping:
            log.warning("worker %d (%s) exited with code %s while stopping; requeued %d "
                        "request(s)", slot.index, slot.worker_id, ended, requeued)
            return
        slot.restarts += 1
        slot.failures, delay = self.backoff.after_death(slot.failures, lived)
        slot.next_start = time.monotonic() + delay
        why = f"failed to start: {failure}" if failure else f"exited with code {ended} after {lived:.1f}s"
        self._record_failure(f"worker {slot.index} {why}")
        log.error("worker %d (%s) exited with code %s after %.1fs%s; requeued %d request(s) "
                  "(%d were in predict); restarting in %.1fs", slot.index, slot.worker_id, ended,
                  lived, f"; failed to start: {failure}" if failure else "", requeued, len(blamed), delay)

    def _record_failure(self, text: str) -> None:
        """Keep the last worker failure where clients look when no worker is live."""
        if self.registry is None:
            return
        where = self.router.err_path if self.router is not None else "the supervisor's output"
        try:
            self.registry.record_failure(f"{text}; see {where}", _FAILURE_TTL)
        except REDIS_ERRORS as exc:
            log.warning("could not record the worker failure for clients: %s", exc)

    # Stop ---------------------------------------------------------------------------------

    def stop(self, graceful: bool = True, timeout: float = 30.0) -> None:
        """Graceful: each worker finishes its batch and gives buffered requests back; requests
        still queued in an embedded Redis that keeps nothing (no AOF) are failed with
        ``RequestLost`` while the REST API is up, so it passes that on (JSON, 503) at once
        rather than wait out its graceful shutdown; then REST and Flower stop; Redis last."""
        if self._stopped:
            return
        self._stopped = True
        self._stop_requested = True
        log.info("stopping service %r: %s", self.settings.name,
                 "batches in predict finish and are stored, buffered requests go back to the "
                 "queue" if graceful else "its workers are killed")
        live = [w for w in self.workers if w.process is not None]
        for slot in live:
            send(slot.process, signal.SIGTERM if graceful else signal.SIGKILL)
        deadline = time.monotonic() + timeout
        for slot in live:
            assert slot.process is not None
            code = wait_or_kill(slot.process, deadline, f"worker {slot.index}")
            if code != 0 or not graceful:
                self._on_death(slot, code, stopping=True)
            slot.process = None
            if slot.pump is not None:
                slot.pump.join(2)
        unlist_if_unserved(self.registry)  # its workers left: the name goes unless others serve it
        self._fail_what_redis_forgets()
        for side in self.extras:
            send(side.process, signal.SIGTERM)
        for side in self.extras:
            if side.process is not None:
                wait_or_kill(side.process, time.monotonic() + 10, f"{side.what} pid "
                             f"{side.process.pid}")
        for server in reversed(self.redis_servers):
            server.stop()
        if self.router is not None:
            self.router.close()
        shutil.rmtree(self._run_dir, ignore_errors=True)
        log.info("service %r stopped", self.settings.name)

    def _fail_what_redis_forgets(self) -> None:
        s = self.settings
        if self.queue is None or not self.redis_servers or self._persist():
            return
        try:
            results = ResultStore(s.connect_backend(), self.keys)
            told = fail_queued(self.queue, results, int(s.result_expires),
                               f"service {s.name!r} stopped before serving this request, and "
                               "its embedded Redis keeps nothing across a stop (start it with "
                               "-data_dir to keep queued requests); send it again")
            if told:
                log.warning("%d queued request(s) failed with RequestLost: no AOF keeps them",
                            len(told))
                if not wait_taken(results, told, _TAKE_SECONDS):
                    log.warning("some clients did not take their RequestLost answers within "
                                "%.0fs (closed, or too slow)", _TAKE_SECONDS)
        except REDIS_ERRORS as exc:
            log.error("could not tell the callers of queued requests: %s", exc)

    def __enter__(self) -> WKRServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
