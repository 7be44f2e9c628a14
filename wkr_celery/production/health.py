"""Is a service serving? Its workers' heartbeats, then a Celery ``ping`` to each of them.

A heartbeat key exists only while a worker's heartbeat thread writes it (it expires after the
visibility timeout), so it proves the process lived a moment ago. The ``ping`` goes through
Celery's remote control to the worker's consumer (``wkr.<name>.<index>@<host>``, the node name
the supervisor gives it), so it proves the process answers now. ``probe=True`` goes further and
sends one real request, a zero input of the shape and dtype the service advertises, at high
priority: it waits behind other high-priority requests and the batches workers already hold,
not behind a backlog of normal ones, so a busy service is not called dead. A probe refused at
the queue's cap (``ServiceOverloaded``) counts as alive, with a note: the service is shedding
load as configured, and restarting it would lose its queue, not relieve it.

``supervisor=PID`` counts only the workers one ``wkr-serving-start`` started, by the pid their
heartbeats name: another version serving the same name beside it (a deploy) does not count.
Two limits there: the other version's workers on this host have the same node names, so either
one's answer counts as the ping's; and the probe's request goes through the queue both versions
take from, so it proves the name answers, not which version.
"""

from __future__ import annotations

import dataclasses
import socket
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from ..broker import ServiceRegistry
from ..config import Settings
from ..connections import REDIS_ERRORS, explain, redacted
from ..errors import ConfigError, ServiceOverloaded, WKRError
from ..keys import ServiceKeys
from .procs import alive

if TYPE_CHECKING:
    from ..client import WKRClient

__all__ = ["WorkerHealth", "HealthReport", "check_service", "celery_node", "check_http"]


@dataclass(frozen=True)
class WorkerHealth:
    """One live worker; ``answered`` is None when it has no node name to ping."""

    worker_id: str
    host: str
    pid: int
    requests: int
    node: str | None
    answered: bool | None
    supervisor: int = 0  # the pid of the wkr-serving-start that started it; 0: none named

    @property
    def serving(self) -> bool:
        return self.answered is not False


@dataclass(frozen=True)
class HealthReport:
    service: str
    broker: str
    workers: tuple[WorkerHealth, ...] = ()
    problem: str = ""
    notes: tuple[str, ...] = field(default=())
    supervisor: int = 0  # only the workers this wkr-serving-start started are counted

    @property
    def healthy(self) -> bool:
        return not self.problem

    def summary(self) -> str:
        if self.problem:
            return f"service {self.service!r} is not serving: {self.problem}"
        serving = [w for w in self.workers if w.serving]
        parts = [f"{w.node or w.worker_id} (pid {w.pid}, {w.requests} requests)" for w in serving]
        notes = "".join(f"; note: {note}" for note in self.notes)
        by = f" started by pid {self.supervisor}" if self.supervisor else ""
        return (f"service {self.service!r} is serving: {len(serving)} of {len(self.workers)} "
                f"worker(s){by} alive and answering: {', '.join(parts)}{notes}")


def celery_node(service: str, worker_id: str, host: str) -> str | None:
    """Celery node name of a worker the supervisor started (its id is ``<name>.<index>.<hex>``)."""
    index, _, suffix = worker_id.removeprefix(f"{service}.").partition(".")
    if not worker_id.startswith(f"{service}.") or not index.isdigit() or not suffix:
        return None
    return f"wkr.{service}.{index}@{host}"


def check_service(
    settings: Settings, *, timeout: float = 3.0, probe: bool = False, local: bool = False,
    results_given: bool = False, supervisor: int = 0,
) -> HealthReport:
    """Healthy when at least one worker has a heartbeat and answers (and the probe, if asked).

    ``local`` counts only this host's workers: a container's or a pod's own probe.
    ``supervisor`` (a pid) counts only the workers that the ``wkr-serving-start`` with that pid
    on this host started, as their heartbeats say: a run script's ``start`` or a unit's
    ``ExecStartPost`` waits for its own workers, not another version's of the same name.
    ``results_given``: the caller named the result Redis (``-port_out``; a ``result_url`` in
    ``settings`` counts too), so the probe reads its answer there, and fails naming both when
    the service stores results elsewhere; else it reads where the service says, as a
    ``WKRClient`` given no result address does.
    """
    name, broker_url = settings.name, redacted(settings.broker)
    report = HealthReport(name, broker_url, supervisor=supervisor)
    client = settings.connect_broker()
    try:
        beats = ServiceRegistry(client, ServiceKeys(name)).live_workers()
    except REDIS_ERRORS as exc:
        why = explain(exc) if isinstance(exc, redis.exceptions.InvalidResponse) else (
            f"is not reachable: {exc}")
        return _with(report, problem=f"broker {broker_url} {why}")
    finally:
        client.close()
    if not beats:
        return _with(report, problem=(
            f"no worker of {name!r} has a heartbeat on {broker_url} (none started, all still "
            f"loading, or dead for more than {settings.visibility_timeout:g}s)"))
    workers = [_worker(name, wid, beat) for wid, beat in sorted(beats.items())]
    workers, problem = _counted(workers, local, supervisor)
    if problem:
        return _with(report, problem=problem)
    nodes = [w.node for w in workers if w.node]
    try:
        answers = _ping(settings, nodes, timeout) if nodes else set()
    except Exception as exc:  # kombu raises transport-specific errors here
        return _with(report, problem=f"ping through {broker_url} failed: {exc}")
    workers = [_answered(w, answers) for w in workers]
    report = _with(report, workers=tuple(workers))
    if not any(w.serving for w in workers):
        return _with(report, problem=(
            f"{len(workers)} worker(s) have a heartbeat but none answered a ping within "
            f"{timeout:g}s: {', '.join(nodes)} (stuck, paused, or their consumer is down)"))
    if probe:
        problem, note = _probe(settings, timeout, results_given or bool(settings.result_url))
        if problem:
            return _with(report, problem=problem)
        if note:
            return _with(report, notes=(*report.notes, note))
    return report


def _worker(service: str, worker_id: str, beat: dict[str, Any]) -> WorkerHealth:
    host = str(beat.get("host", ""))
    return WorkerHealth(worker_id, host, int(beat.get("pid", 0)), int(beat.get("requests", 0)),
                        celery_node(service, worker_id, host), None,
                        int(beat.get("supervisor", 0)))


def _counted(
    workers: list[WorkerHealth], local: bool, supervisor: int
) -> tuple[list[WorkerHealth], str]:
    """The workers to count (this host's with ``local``; with ``supervisor``, those it started
    here), or why none is: ``(workers, problem)``."""
    if not (local or supervisor):
        return workers, ""
    host = socket.gethostname()
    here = [w for w in workers if w.host == host]
    if supervisor:
        mine = [w for w in here if w.supervisor == supervisor]
        if mine:
            return mine, ""
        gone = "" if alive(supervisor) else f"; no process {supervisor} runs here"
        return [], (f"none of its {len(workers)} live worker(s) was started by supervisor pid "
                    f"{supervisor} on this host ({host}): the workers it started may still be "
                    f"loading their model, or failing{gone}")
    if not here:
        return [], f"none of its {len(workers)} live worker(s) runs on this host ({host})"
    return here, ""


def _answered(worker: WorkerHealth, answers: set[str]) -> WorkerHealth:
    if worker.node is None:
        return worker
    return dataclasses.replace(worker, answered=worker.node in answers)


def _with(report: HealthReport, **changes: Any) -> HealthReport:
    return dataclasses.replace(report, **changes)


def _ping(settings: Settings, nodes: list[str], timeout: float) -> set[str]:
    from ..celery_app import make_app

    app = make_app(settings)
    try:
        with app.connection_for_write() as connection:
            replies = app.control.ping(destination=nodes, timeout=timeout, limit=len(nodes),
                                       connection=connection)
    finally:
        app.close()
    return {node for reply in replies or [] for node in reply}


def _probe(settings: Settings, timeout: float, results_given: bool) -> tuple[str, str]:
    """Send one zero input of the advertised shape at high priority: ``(problem, note)``, both
    "" when it was answered; a note alone when the queue's cap refused it (alive, but full)."""
    try:
        with _probe_client(settings, timeout, results_given) as client:
            shape = client.input_shape
            if shape is None or any(d is None for d in shape):
                return (f"-probe needs a fixed input shape, and {settings.name!r} advertises "
                        f"{shape}; set input_shape on the worker class or drop -probe"), ""
            client.encode(np.zeros(shape, dtype=client.input_dtype or np.float32),
                          timeout=timeout, priority="high").result(timeout + 1)
    except ConfigError as exc:  # the result Redis named is not the service's
        return str(exc), ""
    except ServiceOverloaded as exc:  # the cap answered: full, not dead
        return "", (f"the queue is full, so the probe request was refused at its cap ({exc}); "
                    "the service is shedding load as configured: add workers or raise "
                    "-max_queue if it lasts")
    except (WKRError, TimeoutError) as exc:
        return f"a probe request was not answered within {timeout:g}s: {exc!r}", ""
    return "", ""


def _probe_client(settings: Settings, timeout: float, results_given: bool) -> WKRClient:
    """A client named as the flags name the service: the embedded Redis by its ports (so a
    wrong ``-port_out`` is said as ``port_out``), else by URL; results where the service
    says, unless the flags named them."""
    from ..client import WKRClient

    common: dict[str, Any] = {"name": settings.name, "connect_timeout": timeout,
                              "sentinel_master": settings.sentinel_master}
    if not (settings.broker_url or settings.result_url or settings.redis_password):
        return WKRClient(port=settings.port_in,
                         port_out=settings.port_out if results_given else None, **common)
    return WKRClient(broker_url=settings.broker,
                     result_url=settings.backend if results_given else None, **common)


def check_http(url: str, timeout: float = 3.0) -> str:
    """"" when something answers HTTP at ``url`` below status 500, else what went wrong."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
            response.read(0)
    except urllib.error.HTTPError as exc:
        return "" if exc.code < 500 else f"{url} answered HTTP {exc.code}"
    except (urllib.error.URLError, OSError) as exc:
        return f"nothing answers HTTP at {url}: {exc}"
    return ""
