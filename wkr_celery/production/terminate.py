"""``wkr-serving-terminate``: stop a running service by name, found through its workers.

Every worker's heartbeat carries its pid and host. A worker the supervisor started (worker id
``<name>.<index>.<hex>``) is a child of that ``wkr-serving-start`` process, so SIGTERM goes to
the parent, which stops the whole service gracefully: each batch in predict finishes and is
stored, buffered requests go back to the queue. A worker started some other way (``celery -A
wkr_celery worker``) is signalled itself. Workers still loading their model have no heartbeat
yet; they are found by their environment (``WKR_NAME``, ``WKR_WORKER_ID``, the broker), where
this user may read it. Only this host's processes can be signalled; others are listed.

``force=True`` freezes each supervisor (so it restarts nothing), kills the workers, puts every
request they held back on the queue at once (no death counted against them: the operator killed
them, not the input), then kills the supervisor and whatever else it started.
"""

from __future__ import annotations

import dataclasses
import signal
import socket
from collections.abc import Iterator
from dataclasses import dataclass, field

from ..broker import RequestQueue, ServiceRegistry
from ..config import Settings
from ..connections import REDIS_ERRORS, redacted, without_credentials
from ..errors import ConfigError
from ..keys import ServiceKeys
from ..server.leftovers import unlist_if_unserved
from . import procs
from .health import celery_node

__all__ = ["Target", "TerminateReport", "find_targets", "terminate_service"]

_FORCE_WAIT = 10.0


@dataclass
class Target:
    """A process to signal: a supervisor with its workers, or a worker on its own."""

    pid: int
    supervisor: bool
    workers: dict[int, str] = field(default_factory=dict)  # worker pid -> worker id


@dataclass(frozen=True)
class TerminateReport:
    service: str
    signalled: tuple[int, ...] = ()
    still_running: tuple[int, ...] = ()
    elsewhere: tuple[str, ...] = ()
    requeued: int = 0
    notes: tuple[str, ...] = ()
    problem: str = ""

    @property
    def ok(self) -> bool:
        return not self.problem


def find_targets(settings: Settings) -> tuple[dict[int, Target], list[str], list[str]]:
    """This host's processes of the service; workers on other hosts; notes for the operator."""
    host = socket.gethostname()
    targets: dict[int, Target] = {}
    elsewhere: list[str] = []
    notes: list[str] = []
    client = settings.connect_broker()
    try:
        beats = ServiceRegistry(client, ServiceKeys(settings.name)).live_workers()
    except REDIS_ERRORS as exc:
        beats = {}
        notes.append(f"broker {redacted(settings.broker)} is not reachable ({exc}); "
                     "looking for the service's processes on this host only")
    finally:
        client.close()
    for worker_id, beat in beats.items():
        pid, where = int(beat.get("pid", 0)), str(beat.get("host", ""))
        if where != host:
            elsewhere.append(f"{worker_id} (pid {pid} on {where})")
        else:
            _add(targets, settings.name, pid, worker_id)
    for pid, worker_id in _workers_by_environment(settings):
        _add(targets, settings.name, pid, worker_id)
    return targets, elsewhere, notes


def _add(targets: dict[int, Target], service: str, pid: int, worker_id: str) -> None:
    if not procs.alive(pid):
        return
    supervisor = _supervisor_of(pid) if celery_node(service, worker_id, "") is not None else None
    top = supervisor or pid
    targets.setdefault(top, Target(top, supervisor is not None)).workers[pid] = worker_id


def _supervisor_of(pid: int) -> int | None:
    """The ``wkr-serving-start`` that started worker ``pid``, while it is still its parent:
    the worker's environment names it (``WKR_SUPERVISOR_PID``). Pid 1 is one in a container
    (its entry point); elsewhere it is the init a worker is handed to when its supervisor
    died, which the environment tells apart (by the parent's pid alone, the container's
    supervisor was skipped: only the worker was signalled, and the supervisor restarted it)."""
    parent = procs.parent_pid(pid)
    named = (procs.environ(pid) or {}).get("WKR_SUPERVISOR_PID", "")
    if not parent or named:
        return parent if named == str(parent) else None
    return parent if parent > 1 else None  # an environment this user may not read


def _workers_by_environment(settings: Settings) -> Iterator[tuple[int, str]]:
    """Worker processes of this service and broker, heartbeat or not, from their environment."""
    for pid in procs.all_pids():
        env = procs.environ(pid)
        if not env or env.get("WKR_NAME") != settings.name or not env.get("WKR_WORKER_ID"):
            continue
        parent_env = procs.environ(procs.parent_pid(pid) or 0) or {}
        if parent_env.get("WKR_WORKER_ID") == env["WKR_WORKER_ID"]:
            continue  # a process the worker itself started: it goes with the worker
        try:
            broker = Settings.from_env(env).broker
        except ConfigError:
            continue
        if without_credentials(broker) == without_credentials(settings.broker):
            yield pid, env["WKR_WORKER_ID"]


def terminate_service(
    settings: Settings, *, force: bool = False, timeout: float = 60.0
) -> TerminateReport:
    """Stop every process of the service on this host; graceful unless ``force``."""
    targets, elsewhere, notes = find_targets(settings)
    report = TerminateReport(settings.name, elsewhere=tuple(elsewhere), notes=tuple(notes))
    if not targets:
        where = f"; its live workers are on other hosts: {', '.join(elsewhere)}" * bool(elsewhere)
        return _replace(report, problem=(
            f"no process of service {settings.name!r} on {redacted(settings.broker)} found on "
            f"this host{where}"))
    if force and any(t.supervisor and t.pid == 1 for t in targets.values()):
        return _replace(report, problem=(
            "its wkr-serving-start is PID 1 of this container, which no process inside it "
            "can freeze or kill: stop the container from outside (docker kill, docker stop), "
            "or leave out -force for a graceful stop (SIGTERM)"))
    if force:
        return _kill(settings, targets, report)
    for target in targets.values():
        procs.send(target.pid, signal.SIGTERM)
    pids = _all(targets)
    left = procs.wait_gone(pids, timeout)
    report = _replace(report, signalled=tuple(sorted(targets)), still_running=tuple(left))
    if left:
        return _replace(report, problem=(
            f"still running after {timeout:g}s: pids {left} (a long batch may still be in "
            "predict); wait longer with -timeout, or kill with -force"))
    return report


def _kill(
    settings: Settings, targets: dict[int, Target], report: TerminateReport
) -> TerminateReport:
    for target in targets.values():
        if target.supervisor:
            procs.send(target.pid, signal.SIGSTOP)  # frozen: it restarts no worker we kill
    workers = {pid: wid for target in targets.values() for pid, wid in target.workers.items()}
    doomed = [p for pid in workers for p in (pid, *procs.descendants(pid))]
    for pid in doomed:
        procs.send(pid, signal.SIGKILL)
    left = procs.wait_gone(doomed, _FORCE_WAIT)
    requeued, notes = 0, list(report.notes)
    client = settings.connect_broker()
    queue = RequestQueue(client, ServiceKeys(settings.name))
    try:
        for worker_id in workers.values():
            requeued += queue.requeue_dead(worker_id, blamed=[])
    except REDIS_ERRORS as exc:
        notes.append(f"could not requeue the killed workers' requests now ({exc}); the next "
                     "worker to start requeues them after the visibility timeout")
    else:
        unlist_if_unserved(ServiceRegistry(client, queue.keys))  # unless another host serves it
    finally:
        client.close()
    rest = [p for target in targets.values() if target.supervisor
            for p in (target.pid, *procs.descendants(target.pid))]
    for pid in rest:
        procs.send(pid, signal.SIGKILL)
    left += procs.wait_gone(rest, _FORCE_WAIT)
    report = _replace(report, signalled=tuple(sorted(set(doomed + rest))),
                      still_running=tuple(left), requeued=requeued, notes=tuple(notes))
    if left:
        return _replace(report, problem=f"still running after SIGKILL: pids {left}")
    return report


def _all(targets: dict[int, Target]) -> list[int]:
    return sorted({p for t in targets.values() for p in (t.pid, *t.workers)})


def _replace(report: TerminateReport, **changes: object) -> TerminateReport:
    return dataclasses.replace(report, **changes)  # type: ignore[arg-type]
