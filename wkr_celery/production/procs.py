"""Processes on this host, read from ``/proc`` (Linux): parents, environments, signals by pid.

The supervisor starts each worker in its own session, so a worker is not in the supervisor's
process group; finding a service's processes means following parent links, which only ``/proc``
has without extra dependencies.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable

__all__ = [
    "alive", "all_pids", "parent_pid", "environ", "cmdline", "descendants", "send", "wait_gone",
]


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/<pid>/stat`` after the command name (state, ppid, …)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            text = handle.read().decode(errors="replace")
    except OSError:
        return None
    return text.rpartition(")")[2].split()


def alive(pid: int) -> bool:
    """The process exists and has not exited (a zombie has: only its parent's wait is due)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    fields = _stat_fields(pid)
    return fields is None or fields[0] not in ("Z", "X")


def parent_pid(pid: int) -> int | None:
    fields = _stat_fields(pid)
    return int(fields[1]) if fields else None


def environ(pid: int) -> dict[str, str] | None:
    """The environment a process started with; None when it is gone or not ours to read."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as handle:
            raw = handle.read()
    except OSError:
        return None
    pairs = (item.decode(errors="replace").partition("=") for item in raw.split(b"\0") if item)
    return {key: value for key, _, value in pairs}


def cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return []
    return [part.decode(errors="replace") for part in raw.split(b"\0") if part]


def all_pids() -> list[int]:
    return [int(entry) for entry in os.listdir("/proc") if entry.isdigit()]


def descendants(pid: int) -> list[int]:
    """Children, grandchildren… of ``pid``, parents before their children."""
    children: dict[int, list[int]] = {}
    for other in all_pids():
        parent = parent_pid(other)
        if parent is not None:
            children.setdefault(parent, []).append(other)
    found: list[int] = []
    frontier = [pid]
    while frontier:
        nxt = [child for parent in frontier for child in children.get(parent, [])]
        found.extend(nxt)
        frontier = nxt
    return found


def send(pid: int, sig: int) -> bool:
    """Signal ``pid``; False when it is already gone."""
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return False
    return True


def wait_gone(pids: Iterable[int], timeout: float, interval: float = 0.1) -> list[int]:
    """Wait until every pid has exited; returns those still alive at ``timeout``."""
    left = [pid for pid in pids if alive(pid)]
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        time.sleep(interval)
        left = [pid for pid in left if alive(pid)]
    return left

