"""Why a worker ended, in words an operator can act on: ``-9`` alone does not say that the
kernel's OOM killer ended it because its container (its memory cgroup) reached its limit.

The kernel counts the processes its OOM killer ends in each memory cgroup: ``oom_kill`` in
``memory.events`` (cgroup v2) or ``memory.oom_control`` (v1). The supervisor's cgroup is its
workers' (they inherit it, as every process of a container does), so a SIGKILL that comes
with a higher count than at the previous death was the OOM killer's.
"""

from __future__ import annotations

import signal
from pathlib import Path

__all__ = ["ExitReasons", "oom_kills"]

_ROOT = Path("/sys/fs/cgroup")


def _counter_files() -> list[Path]:
    """Where this process's memory cgroup keeps its OOM kill count, most specific first: its
    path as ``/proc/self/cgroup`` names it, then the mount's root (a container that sees only
    its own cgroup there while ``/proc/self/cgroup`` names the host's path)."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return []
    files = []
    for line in lines:
        _, controllers, path = line.split(":", 2)
        if controllers == "":  # cgroup v2
            files += [_ROOT / path.lstrip("/") / "memory.events", _ROOT / "memory.events"]
        elif "memory" in controllers.split(","):
            files += [_ROOT / "memory" / path.lstrip("/") / "memory.oom_control",
                      _ROOT / "memory" / "memory.oom_control"]
    return files


def oom_kills() -> int | None:
    """How many processes the OOM killer has ended in this process's memory cgroup, or None
    when the kernel does not say (no cgroup memory controller, another OS)."""
    for path in _counter_files():
        try:
            for line in path.read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "oom_kill":
                    return int(value)
        except (OSError, ValueError):
            continue
    return None


class ExitReasons:
    """Says how a worker ended (:meth:`explain`), remembering the OOM kill count in between."""

    def __init__(self) -> None:
        self._kills = oom_kills()

    def explain(self, code: int) -> str:
        """The exit code, with what it means when a signal ended the process: ``"-9 (SIGKILL
        from the kernel's OOM killer: …)"``, ``"-11 (SIGSEGV)"``, ``"3"``."""
        kills, before = oom_kills(), self._kills
        self._kills = kills
        if code >= 0:
            return str(code)
        try:
            name = signal.Signals(-code).name
        except ValueError:
            return str(code)
        if code == -signal.SIGKILL and kills is not None and before is not None and (
                kills > before):
            return (f"{code} ({name} from the kernel's OOM killer: the memory limit of this "
                    "container or cgroup was reached; give it more memory, or lower "
                    "-batch_size or -num_worker)")
        return f"{code} ({name})"
