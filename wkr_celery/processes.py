"""Child processes the framework supervises (workers, decentralize units, Redis, REST, Flower).

Every child asks the kernel for SIGTERM when its parent dies, so none keeps running
unsupervised, and every stop is bounded: SIGTERM, wait until a deadline, then SIGKILL. A child
that dies is restarted after a :class:`Backoff` delay. Every child is started by :func:`spawn`,
leads a process group of its own, and takes that group with it when it exits
(:func:`finished`); a supervisor that is a container's PID 1 also reaps the orphans the
container hands it (:func:`reap_orphans`).
"""

from __future__ import annotations

import ctypes
import glob
import logging
import os
import queue
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from .errors import ConfigError

__all__ = ["Backoff", "die_with_parent", "spawn", "forks", "send", "wait_or_kill", "finished",
           "reap_orphans", "pid_alive", "port_holder", "private_dir", "writable_dir", "owned_temp_dir",
           "clean_stale_dirs", "on_stop_signals", "OWNER_FILE"]

log = logging.getLogger("wkr_celery.processes")

_PR_SET_PDEATHSIG = 1
#: The exit code of a child whose parent died before the child could ask for its signal.
EXIT_ORPHANED = 75
#: The pid of the process that made a temporary directory, written inside it.
OWNER_FILE = "owner.pid"
_WAIT_SECONDS = 0.02  # how often a stop looks whether a child has exited


@dataclass(frozen=True)
class Backoff:
    """The delay before restarting a process that died, from how long it lived.

    A process that dies young again doubles the delay (``first``, 2×, 4×… up to ``most``), so a
    crash loop does not spin; one that ran ``healthy_after`` seconds or more is forgiven and
    starts again from ``first``, however often it crashed before.
    """

    first: float = 0.5
    most: float = 30.0
    healthy_after: float = 60.0

    def after_death(self, failures: int, lived: float) -> tuple[int, float]:
        """``(failures, delay)`` after a death: the new count of young deaths in a row and the
        seconds to wait before the next start."""
        failures = 1 if lived >= self.healthy_after else failures + 1
        return failures, min(self.most, self.first * 2 ** (failures - 1))


#: The pid of the process that forks, written by it just before each fork (``register_at_fork``
#: below), so the child's copy names the parent that forked it, whatever happened since.
_forking_parent = 0


def _note_forking_parent() -> None:
    global _forking_parent
    _forking_parent = os.getpid()


os.register_at_fork(before=_note_forking_parent)

_forks = 0


def forks() -> int:
    """How many forks lie between this process and the one that first imported us: what an
    object made before a fork compares with its own count to notice it is in a child. A read
    of a global, where ``os.getpid()`` is a system call on every request."""
    return _forks


def _count_fork() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_count_fork)


def die_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """``preexec_fn``: the child gets SIGTERM (a graceful stop) when its parent dies.

    A parent that dies between the fork and the ``prctl`` sends no signal: the child has been
    handed to another process already. So the child looks at its parent after the ``prctl`` and,
    if it is no longer the one that forked it, exits before it runs anything.
    """
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        return
    if os.getppid() != _forking_parent:
        os._exit(EXIT_ORPHANED)


class _Spawner:
    """The thread that starts this process's children. Linux sends the parent-death signal
    when the *thread* that forked a child ends, not the process: a service started from a
    short-lived thread (``asyncio.to_thread``, a pool's worker, a request handler) lost its
    workers and its Redis the moment that thread finished. This thread lives as long as the
    process, so its children die with the process and nothing sooner."""

    def __init__(self) -> None:
        self.jobs: queue.SimpleQueue[tuple[Sequence[str], dict[str, Any], Future[Any]]] = (
            queue.SimpleQueue())
        self.thread = threading.Thread(target=self._run, name="wkr-spawner", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            command, options, done = self.jobs.get()
            try:
                done.set_result(_popen(command, options))
            except BaseException as exc:  # the caller's error, raised on the caller's thread
                done.set_exception(exc)

    def start(self, command: Sequence[str], options: dict[str, Any]) -> subprocess.Popen[bytes]:
        if threading.current_thread() is self.thread:
            return _popen(command, options)
        done: Future[subprocess.Popen[bytes]] = Future()
        self.jobs.put((command, options, done))
        return done.result()


#: The children :func:`spawn` started, by pid, while their ``Popen`` lives.
_spawned: weakref.WeakValueDictionary[int, subprocess.Popen[bytes]] = (
    weakref.WeakValueDictionary())
#: Held from a fork until its child is in ``_spawned``, so no reap takes a child of ours.
_spawning = threading.Lock()


def _popen(command: Sequence[str], options: dict[str, Any]) -> subprocess.Popen[bytes]:
    with _spawning:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, start_new_session=True,
                                preexec_fn=die_with_parent, **options)
        _spawned[proc.pid] = proc
    return proc


_spawner: _Spawner | None = None
_spawner_lock = threading.Lock()


def _forget_spawner() -> None:  # a forked child has no copy of the thread, only of the object
    global _spawner, _spawner_lock, _spawning
    _spawner, _spawner_lock, _spawning = None, threading.Lock(), threading.Lock()
    _spawned.clear()  # its parent's children, not its own


os.register_at_fork(after_in_child=_forget_spawner)


def spawn(command: Sequence[str], **options: Any) -> subprocess.Popen[bytes]:
    """Start a supervised child: ``subprocess.Popen(command, **options)`` in a session of its
    own (the terminal's Ctrl+C reaches only the supervisor), with no stdin, and with SIGTERM
    when this process dies (:func:`die_with_parent`), whichever thread calls."""
    global _spawner
    with _spawner_lock:
        if _spawner is None:
            _spawner = _Spawner()
        spawner = _spawner
    return spawner.start(command, options)


def on_stop_signals(handler: Callable[[int, FrameType | None], None]) -> dict[int, Any]:
    """Make SIGTERM, SIGINT (Ctrl+C) and SIGHUP call ``handler``, from the main thread;
    returns the handlers they had, for a caller that puts them back.

    SIGHUP is what a service started in a terminal gets when that terminal closes or its SSH
    session drops. Its default action kills the supervisor on the spot, leaving workers
    whose broker then dies under them and queued callers who are never told. So it asks for
    the same graceful stop as the other two. A SIGHUP ignored at start (``nohup``) means
    "outlive the terminal", and it stays ignored.
    """
    signals = [signal.SIGTERM, signal.SIGINT]
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signals.append(signal.SIGHUP)
    return {sig: signal.signal(sig, handler) for sig in signals}


def send(proc: subprocess.Popen[bytes] | None, sig: int) -> None:
    """Signal ``proc`` if it still runs; a process that just exited is not an error."""
    if proc is not None and proc.poll() is None:
        try:
            proc.send_signal(sig)
        except ProcessLookupError:
            pass


def wait_or_kill(proc: subprocess.Popen[bytes], deadline: float, what: str) -> int:
    """Wait for ``proc`` until ``deadline`` (monotonic); past it, kill it. Returns its exit code.
    Like :func:`finished`, it kills what is left of the child's process group once it exits."""
    deadline = max(deadline, time.monotonic() + 0.1)  # a late caller still gives it a moment
    while (code := finished(proc)) is None and time.monotonic() < deadline:
        time.sleep(_WAIT_SECONDS)
    if code is not None:
        return code
    log.error("%s did not stop in time; killing it", what)
    proc.kill()
    deadline = time.monotonic() + 10
    while (code := finished(proc)) is None and time.monotonic() < deadline:
        time.sleep(_WAIT_SECONDS)
    return proc.wait(0.1) if code is None else code


def finished(proc: subprocess.Popen[bytes]) -> int | None:
    """``proc.poll()``, which also ends the processes the child left behind in its process
    group (a model's helpers: a data loader's workers, a tokenizer's pool, a server it
    started): killed with SIGKILL, that child cannot end them, and they would outlive it,
    holding memory and GPU memory its restarted copy needs. Every child :func:`spawn` starts
    leads a group of its own, so its pid names that group until it is reaped: the group is
    killed while the exited child still holds its pid (``WNOWAIT``), then the child is reaped.
    A helper in a session of its own is beyond reach (see :func:`reap_orphans`)."""
    if proc.returncode is not None:
        return proc.returncode
    try:
        exited = os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
    except ChildProcessError:  # reaped by someone else: poll() says so
        return proc.poll()
    if exited is None:
        return None
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):  # nothing left in its group
        pass
    return proc.poll()


def reap_orphans() -> list[int]:
    """As PID 1 (a container's entry point: ``docker run`` with no ``--init``), reap the
    children that exited and that :func:`spawn` did not start; returns their pids.

    PID 1 is the reaper of every orphan in its PID namespace: a helper whose worker was
    killed, a process a health check left behind. One that exits stays a zombie until its new
    parent reaps it, and ``subprocess`` reaps only the children it started. The children
    :func:`spawn` started are left to their ``Popen``, which reads their exit code. Anywhere
    else this does nothing: there orphans go to init, and an unknown child is someone's
    ``Popen``, whose exit code a reap here would steal.
    """
    if os.getpid() != 1:
        return []
    reaped = []
    with _spawning:
        own = {pid for pid, proc in list(_spawned.items()) if proc.returncode is None}
        for pid in _children() - own:
            try:
                if os.waitpid(pid, os.WNOHANG)[0] == pid:
                    reaped.append(pid)
            except ChildProcessError:
                continue
    if reaped:
        log.debug("reaped orphaned process(es) %s", reaped)
    return reaped


def _children() -> set[int]:
    """This process's children (every thread's), from ``/proc``."""
    found: set[int] = set()
    try:
        tasks = os.listdir("/proc/self/task")
    except OSError:
        return found
    for task in tasks:
        try:
            with open(f"/proc/self/task/{task}/children") as handle:
                found.update(int(pid) for pid in handle.read().split())
        except (OSError, ValueError):
            continue
    return found


def pid_alive(pid: int) -> bool:
    """True while a process ``pid`` exists (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] != b"Z"
    except (OSError, IndexError):
        return False


def port_holder(port: int) -> str:
    """Who listens on TCP ``port``: ``"pid 123 (redis-server …)"``, as far as /proc tells this
    user; for the error that names the process in the way."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as handle:
                rows = handle.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 9 and fields[3] == "0A" and int(fields[1].rsplit(":", 1)[1], 16) == port:
                inodes.add(f"socket:[{fields[9]}]")
    for entry in os.listdir("/proc") if inodes else ():
        if not entry.isdigit():
            continue
        try:
            fds = os.listdir(f"/proc/{entry}/fd")
            if any(os.readlink(f"/proc/{entry}/fd/{fd}") in inodes for fd in fds):
                with open(f"/proc/{entry}/cmdline", "rb") as handle:
                    command = handle.read().replace(b"\0", b" ").decode(errors="replace")
                # Another user's process names itself: keep its escape sequences off the
                # terminal that shows this message.
                shown = "".join(c if c.isprintable() else " " for c in command[:4096])
                return f"pid {entry} ({' '.join(shown.split())[:120]})"
        except OSError:
            continue
    return "a process this user cannot see" if inodes else "no listening process found"


def private_dir(path: str) -> str:
    """``path``, made (with its parents) when missing, the last folder readable by this user
    alone (0700): a ``-data_dir`` holds queued inputs and results in Redis's append-only file,
    which Redis writes 0644. A folder that already exists keeps the mode its owner gave it."""
    return writable_dir(path, "-data_dir", mode=0o700)


def writable_dir(path: str, flag: str, mode: int = 0o777) -> str:
    """``path``, made (with its parents) when missing; a :class:`~wkr_celery.errors.ConfigError`
    naming it, ``flag`` and the way out when this user cannot write there, as in a container
    whose root filesystem is read-only or whose volume belongs to another uid (an ``OSError``
    deep in a start said neither which setting nor what to do)."""
    try:
        os.makedirs(path, mode=mode, exist_ok=True)
        why = "" if os.access(path, os.W_OK | os.X_OK) else "not writable"
    except OSError as exc:
        why = exc.strerror or str(exc)
    if why:
        raise ConfigError(
            f"{flag} {path} cannot be written by uid {os.getuid()} ({why}); make it writable "
            "by this user, or mount a writable volume there (in a container with a read-only "
            "root filesystem)")
    return path


def owned_temp_dir(prefix: str) -> str:
    """A new temporary directory holding the creator's pid, so a later start can tell a
    directory whose owner was killed (and remove it) from one in use."""
    clean_stale_dirs(prefix)
    try:
        path = tempfile.mkdtemp(prefix=prefix)
        Path(path, OWNER_FILE).write_text(str(os.getpid()))
    except OSError as exc:  # no /tmp, /var/tmp or $TMPDIR this user can write
        raise ConfigError(
            f"no writable temporary folder ({exc.strerror or exc}); wkr-celery keeps its run "
            "files there: mount a tmpfs at /tmp (docker run --tmpfs /tmp, a Kubernetes "
            "emptyDir) or set TMPDIR to a writable folder") from exc
    return path


def clean_stale_dirs(prefix: str) -> list[str]:
    """Remove the temporary directories named ``<prefix>*`` whose owner process (its pid in
    :data:`OWNER_FILE`) is gone; returns the paths removed. A process killed with SIGKILL cannot
    clean up after itself. A directory without an owner file is left alone: nothing says
    whether whoever made it still uses it."""
    removed: list[str] = []
    try:
        folder = tempfile.gettempdir()
    except OSError:  # no writable temporary folder: nothing there to clean
        return removed
    for path in glob.glob(os.path.join(folder, glob.escape(prefix) + "*")):
        try:
            pid = int(Path(path, OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue
        if not pid_alive(pid):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed
