"""The batching loop of one worker process: fetch → predict → store, each in its own thread.

Under load three stages overlap so ``predict`` never waits on Redis: the fetcher keeps up to
``prefetch × batch_size`` decoded requests buffered (one scripted round trip moves a whole group
into this worker's inflight hash), the predictor takes a batch whenever it is free, and the
writer stores a batch's results (one scripted command) and only then acks its messages. Idle,
one thread does all three: the predictor waits on the queue itself, predicts what it fetched and
stores it (:mod:`.fetcher`). A heartbeat thread proves the worker alive; when it stops, any
worker's sweep requeues what it held.
"""

from __future__ import annotations

import logging
import os
import queue
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from ..broker import RequestQueue, ResultStore, ServiceRegistry
from ..clock import RedisClock
from ..codec import dumps
from ..config import Settings
from ..connections import REDIS_ERRORS, redacted
from ..errors import DeadlineExceeded
from ..keys import ServiceKeys
from ..messages import now_iso
from ..result_store import kept_result_store
from ..version import __version__
from .acks import PendingAcks
from .buffer import KeyedRequestBuffer, RequestBuffer
from .counted_logs import BrokerOutage, LateDrops
from .fetcher import Fetcher, ack_args, split
from .hardworker import WKRHardWorker
from .info_owner import InfoOwner, new_deploy
from .request import Outcome, Request
from .runner import ModelRunner
from .status import Reported, ServingStats, service_info

__all__ = ["ServingLoop"]

log = logging.getLogger("wkr_celery.serving")

_POLL_SECONDS = 1.0  # idle wait; also how soon messages from plain Celery producers are seen
_BACKOFF_CAP = 2.0
_TURN_WAIT = 0.005  # longest an idle predictor waits for the fetcher thread's turn to end

#: Called with each stored batch, its outcomes and its predict seconds, on the thread that stored
#: it; one with a ``close()`` method is closed when the loop stops.
BatchListener = Callable[[Sequence[Request], Sequence[Outcome], float], None]


class ServingLoop:
    """Serves one service's queue with one model; ``start`` returns once threads run."""

    def __init__(
        self,
        settings: Settings,
        worker: WKRHardWorker,
        *,
        worker_id: str,
        device_id: int,
        running_file: str | None = None, supervisor: int = 0, deployed: str = "",
    ) -> None:
        self.settings, self.worker, self.worker_id = settings, worker, worker_id
        # Its heartbeat names the wkr-serving-start that started it (0: by hand, none).
        self._supervised = {"supervisor": supervisor} if supervisor else {}
        self.device_id = device_id
        self.keys = ServiceKeys(settings.name)
        broker = settings.connect_broker(blocking_timeout=_POLL_SECONDS)
        self.queue = RequestQueue(broker, self.keys)
        self.registry = ServiceRegistry(broker, self.keys)
        same_redis = settings.backend == settings.broker
        self.results = ResultStore(broker if same_redis else settings.connect_backend(), self.keys)
        self._same_redis = same_redis
        self.clock = RedisClock(broker)  # deadlines are on the broker's clock
        self.runner = ModelRunner(worker, settings, device_id, clock=self.clock.now)
        capacity = settings.prefetch * settings.batch_size
        self.buffer = (
            KeyedRequestBuffer(capacity, self.runner.batch_traits, settings.max_batch_cost)
            if self.runner.batches_by_traits else RequestBuffer(capacity)
        )
        self.stats, self.reported = ServingStats(), Reported()
        self.late_drops = LateDrops(log)  # counted, not a line each (see .counted_logs)
        self.outage = BrokerOutage(log, redacted(settings.broker))  # the same
        self.listeners: list[BatchListener] = []
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self._stopping = threading.Event()
        # Whether the model loaded and the loop went on to serve; a stop before that has
        # nothing to finish. The lock orders that decision against stop() (see _predict_loop).
        self._serving = False
        self._start_lock = threading.Lock()
        self._results: queue.Queue[tuple[list[Request], list[Outcome], float] | None] = (
            queue.Queue(maxsize=2)
        )
        self._running_fd = (
            os.open(running_file, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
            if running_file else None
        )
        self._running_written = 0  # bytes of ids in the running file (then only spaces)
        self._threads: list[threading.Thread] = []
        self.info_owner = InfoOwner(self.registry, self._service_info, deployed or new_deploy())
        self.fetcher = Fetcher(self.queue, worker_id, self.buffer, settings, self._stopping,
                               _POLL_SECONDS, self.outage)
        self.acks = PendingAcks(self.queue, worker_id, self.fetcher.forget)  # see _store
        self._tmp = tempfile.TemporaryDirectory(prefix=f"wkr-{settings.name}-")

    # Lifecycle ----------------------------------------------------------------------------

    def start(self) -> None:
        # Hand the GIL over within 0.5 ms instead of 5: when predict returns, the predictor
        # thread must not wait behind the fetcher decoding the next batch.
        sys.setswitchinterval(0.0005)
        predictor = threading.Thread(target=_exit_on_error(self._predict_loop),
                                     name="wkr-predict", daemon=True)
        self._threads.append(predictor)
        predictor.start()

    def _start_io(self) -> None:
        for target, name in (
            (self.fetcher.run, "wkr-fetch"),
            (self._write_loop, "wkr-write"),
            (self._heartbeat_loop, "wkr-heartbeat"),
        ):
            thread = threading.Thread(target=_exit_on_error(target), name=name, daemon=True)
            self._threads.append(thread)
            thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Graceful: finish the batch in predict, store it, give buffered requests back."""
        with self._start_lock:
            if self._stopping.is_set():
                return
            self._stopping.set()
            serving = self._serving
        if not serving:
            # The model is still loading (user code, which cannot be interrupted): nothing was
            # fetched or registered, so there is nothing to finish or give back, and the
            # process may end now instead of when the model is loaded. The loading thread
            # sees the stop when it is done and serves nothing.
            log.info("worker %s: stopped while its model was loading; it had fetched nothing",
                     self.worker_id)
            if self._running_fd is not None:
                os.close(self._running_fd)
                self._running_fd = None
            return
        # Celery's warm-shutdown print is off (a print to a dead supervisor's pipe kept workers
        # alive, see bootstep._quiet_warm_shutdown); logging never raises, so this says it.
        log.info("worker %s: warm shutdown (finishing the batch in predict, up to %.0f s)",
                 self.worker_id, timeout)
        deadline = time.monotonic() + timeout
        fetcher = self._thread("wkr-fetch")
        if fetcher is not None:
            fetcher.join(_POLL_SECONDS + 11)
        left = self.buffer.close()
        if left:
            self._retry(lambda: self.queue.give_back(self.worker_id, *split(left)),
                        "give back buffered requests", deadline)
            log.info("gave %d buffered requests back to the queue", len(left))
        batch_threads = [t for t in map(self._thread, ("wkr-predict", "wkr-write")) if t]
        for thread in batch_threads:
            thread.join(max(0.1, deadline - time.monotonic()))
        if not any(t.is_alive() for t in batch_threads):
            self._close_listeners()  # no thread calls them any more
        # Acks a broker outage held back go first: else those batches would be answered twice.
        self._retry(self.acks.flush, "ack stored results", deadline)
        self.late_drops.flush(force=True)
        # The heartbeat thread ends at its next wait (a beat sent after the worker left the
        # registry would list it again); then the last batches' figures go to the totals.
        if (heart := self._thread("wkr-heartbeat")) is not None:
            heart.join(5)
        _, last = self.stats.beat(self.worker.statistics.snapshot())
        self._retry(lambda: self.registry.add_totals(self.reported.grown(last)),
                    "add this worker's last figures to the service's totals", deadline)
        # Whatever is still inflight (a batch not stored by the deadline) goes back unblamed, and the
        # worker leaves the registry, so no peer's sweep waits out its heartbeat.
        self._retry(lambda: self.queue.requeue_dead(self.worker_id, blamed=()),
                    "put back what is left and leave the worker registry", deadline)
        if self._running_fd is not None:
            os.close(self._running_fd)
            self._running_fd = None
        self._tmp.cleanup()
        log.info("worker %s: stopped", self.worker_id)

    def _close_listeners(self) -> None:
        """Close the listeners that hold something (``TaskEvents``: its events connection)."""
        for listener in self.listeners:
            close = getattr(listener, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("could not close the batch listener %r", listener)

    def _thread(self, name: str) -> threading.Thread | None:
        return next((t for t in self._threads if t.name == name), None)

    def _retry(self, action: Callable[[], Any], what: str, deadline: float) -> Any:
        delay = 0.05
        while True:
            try:
                return action()
            except REDIS_ERRORS as exc:
                if time.monotonic() + delay > deadline:
                    log.error("could not %s before the stop deadline: %s", what, exc)
                    return None
                time.sleep(delay)
                delay = min(delay * 2, _BACKOFF_CAP)

    # Predictor ----------------------------------------------------------------------------

    def _predict_loop(self) -> None:
        try:
            self.runner.load(self._tmp.name)
        except BaseException as exc:  # the supervisor restarts us; the log says why
            log.exception("loading the model failed; this worker process will exit")
            self.failed = exc
            self.ready.set()
            return
        with self._start_lock:
            if self._stopping.is_set():  # stopped while the model loaded: serve nothing
                self._tmp.cleanup()
                self.ready.set()
                return
            self._serving = True
        self._retry(self.info_owner.write, "write service info", time.monotonic() + 60)
        self._beat()
        self._start_io()
        self.ready.set()
        log.info("worker %s serving %r on device %s (batch_size %d, protocol %s)",
                 self.worker_id, self.settings.name, self.device_id,
                 self.settings.batch_size, self.settings.protocol)
        while True:
            batch = self._next_batch()
            if batch is None:
                break
            self._mark_running(batch)
            started = time.perf_counter()
            outcomes = self.runner.run(batch)
            elapsed = time.perf_counter() - started
            self._mark_running(())
            if not len(self.buffer) and not self._results.unfinished_tasks:
                # Nothing to predict next and the writer is idle: storing here saves a thread
                # hand-off on the latency path, and delays no other batch.
                self._finish(batch, outcomes, elapsed)
            else:
                self._results.put((batch, outcomes, elapsed))
        self._results.put(None)

    def _next_batch(self) -> list[Request] | None:
        """The next batch; ``None`` once stopped. With nothing buffered this thread waits on
        the queue itself (no hand-off from the fetcher thread for a lone request) unless the
        fetcher thread is fetching, whose result it then waits for on the buffer."""
        size, timeout = self.settings.batch_size, self.settings.batch_timeout
        while True:
            batch = self.buffer.take(size, timeout, wait=0)
            if batch != []:
                return batch
            self.fetcher.busy.clear()  # the fetcher thread stands down
            try:
                if not self.fetcher.fetch_when_idle():
                    # Briefly: the fetcher thread pokes when it lets go of the turn, but a poke
                    # before this wait begins is lost, and then nobody would watch the queue.
                    batch = self.buffer.take(size, timeout, wait=_TURN_WAIT)
                    if batch != []:
                        return batch
            finally:
                self.fetcher.busy.set()

    def _mark_running(self, batch: Sequence[Request]) -> None:
        """Tell the supervisor which requests are in predict, in case this process dies now.

        One ``pwrite`` per call, padded with spaces over what the last one wrote (the reader
        strips them): truncating the file first cost two more syscalls per batch, 10-15 us on
        ext4, and left a moment with the file empty."""
        if self._running_fd is None:
            return
        text = ",".join([str(r.id) for r in batch]).encode()
        if text or self._running_written:
            os.pwrite(self._running_fd, text.ljust(self._running_written), 0)
        self._running_written = len(text)

    # Writer -------------------------------------------------------------------------------

    def _write_loop(self) -> None:
        while True:
            item = self._results.get()
            try:
                if item is None:
                    return
                self._finish(*item)
            finally:
                self._results.task_done()

    def _finish(self, batch: list[Request], outcomes: list[Outcome], elapsed: float) -> None:
        """Store and ack one predicted batch, then count it and tell the listeners."""
        self._store(batch, outcomes)
        failed = sum(1 for o in outcomes if o.error is not None)
        self.stats.add_batch(len(batch), failed, elapsed)
        for listener in self.listeners:
            try:
                listener(batch, outcomes, elapsed)
            except Exception:
                log.exception("batch listener failed")

    def _store(self, batch: Sequence[Request], outcomes: Sequence[Outcome]) -> None:
        """Results before acks, never the other way round: one script does both when one Redis
        holds queue and results; otherwise a crash between the two answers twice, never 0, and
        the ack waits in :attr:`acks` while the broker is down, holding back no later batch's
        results (:mod:`.acks`)."""
        date = now_iso()
        expires = max(1, int(self.settings.result_expires))
        max_result = self.settings.max_result
        results: list[tuple[str, bytes, str | None]] = []
        for request, outcome in zip(batch, outcomes):
            task_id = request.task_id
            if task_id is None:
                continue
            if isinstance(outcome.error, DeadlineExceeded):
                self.late_drops.add()
            elif outcome.error is not None:
                log.error("request %s failed: %s%s", task_id, outcome.error,
                          f"\n{outcome.traceback}" if outcome.traceback else "")
            results.append((task_id, outcome.stored(task_id, date, max_result),
                            request.client_id or None))
        if self._same_redis:  # one round trip: results and acks in the same script
            ids, suspects, landed = ack_args(batch)
            self._retry(lambda: self.results.store(
                results, expires, ack=(self.worker_id, ids, suspects, landed)),
                "store results", float("inf"))
            self.fetcher.forget(batch)  # after the ack, so reconcile never sees one in neither
        else:
            if results:
                self._retry(lambda: self.results.store(results, expires),
                            "store results", float("inf"))
            self.acks.add(batch)  # acked, then forgotten, now or by a later try
            self.acks.try_flush()

    # Heartbeat ----------------------------------------------------------------------------

    def _beat(self) -> None:
        self.clock.sync_if_due()
        figures, totals = self.stats.beat(self.worker.statistics.snapshot())
        status = dumps({
            "worker_id": self.worker_id, "pid": os.getpid(), "host": socket.gethostname(),
            "device_id": self.device_id, **self._supervised,
            "deployed": self.info_owner.deployed,
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"),
            **figures, "buffered": len(self.buffer), "version": __version__,
        })
        if self.registry.heartbeat(self.worker_id, status, self.settings.visibility_timeout,
                                   self.reported.grown(totals)):
            self.reported.sent(totals)

    def _service_info(self) -> dict[str, Any]:
        """The service info to write; a ``result_store`` already registered for the same
        Redis is kept (:func:`~wkr_celery.result_store.kept_result_store`)."""
        info = service_info(self.settings, self.worker)
        info["result_store"] = kept_result_store(
            self.settings.broker, self.registry.info().get("result_store"), info["result_store"])
        return info

    def _heartbeat_loop(self) -> None:
        interval, beats = min(1.0, self.settings.visibility_timeout / 5), 0
        while not self._stopping.wait(interval):
            beats += 1
            try:
                self._beat()
                self.late_drops.flush()
                self.acks.try_flush()  # acks a broker outage held back, if no store did
                self.info_owner.check()  # a Redis restarted empty; a deploy gone
                if beats % 2 == 0:
                    for dead, count in self.queue.sweep().items():
                        log.warning("worker %s missed its heartbeat; requeued its %d requests",
                                    dead, count)
                self.outage.succeeded("heartbeat")
            except REDIS_ERRORS as exc:
                self.outage.failed("heartbeat", exc)  # logged once an outage, then summed


def _exit_on_error(target: Callable[[], None]) -> Callable[[], None]:
    """A stage that dies would leave a worker heartbeating but serving nothing: exit instead,
    so the supervisor requeues what this process held and starts a fresh one."""

    def run() -> None:
        try:
            target()
        except BaseException:
            log.critical("thread %s failed; exiting so the supervisor requeues this worker's "
                         "requests and restarts it", threading.current_thread().name,
                         exc_info=True)
            os._exit(70)

    return run
