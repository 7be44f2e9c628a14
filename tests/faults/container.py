"""A container made of Linux namespaces, for tests of what Docker and Kubernetes do to a service.

:class:`Container` runs a command the way ``docker run --read-only --tmpfs /tmp --user 65534``
runs an image's entry point: as PID 1 of a PID namespace of its own (with its own ``/proc``),
which gets no default signal dispositions and inherits every orphan of the container; with the
root filesystem read-only and a fresh tmpfs at ``/tmp`` the only place to write (or none, with
``tmpfs=False``); as uid 65534 with no ``HOME`` (its passwd home, ``/nonexistent``, does not
exist), as an image built with an arbitrary user, or OpenShift, runs it. The network namespace
is this machine's: the service still binds loopback only. :meth:`Container.exec` is ``docker
exec``; :meth:`Container.close` kills PID 1, and the kernel kills everything else in the
namespace with it. :class:`MemoryCgroup` is ``docker run --memory``: a memory cgroup with a
limit, which a process joins by writing its pid to it.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path

from tests.helpers import ROOT, wait_until
from tests.scripts import user_env

#: ``docker run --user 65534`` (``nobody``): no home, writes nothing outside the tmpfs.
UID = 65534

# The mounts, made in the new mount namespace only: root read-only, /tmp a fresh tmpfs.
_MOUNTS = """
mount --make-rprivate / && mount -o remount,bind,ro / || exit 90
if [ "$1" = tmpfs ]; then mount -t tmpfs -o mode=1777 tmpfs /tmp || exit 91; fi
shift
"""

# Not root, but allowed to read and search every folder (CAP_DAC_READ_SEARCH, never write):
# the test's interpreter may live under a folder only root may enter (/root/.pyenv), which an
# image's would not. Every write is checked as any other user's.
_USER = ["setpriv", f"--reuid={UID}", f"--regid={UID}", "--clear-groups",
         "--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]


def unavailable_reason() -> str | None:
    """Why a container cannot be made here (so the tests skip), or None: then it must work."""
    if not sys.platform.startswith("linux"):
        return "PID and mount namespaces are Linux only"
    if os.geteuid() != 0:
        return "creating PID and mount namespaces needs root (CI runs the suite as root)"
    missing = [tool for tool in ("unshare", "nsenter", "setpriv", "mount")
               if shutil.which(tool) is None]
    if missing:
        return f"{', '.join(missing)} not found (util-linux)"
    return None


def container_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment an image gives its entry point: the venv's PATH, no ``HOME``, no
    ``XDG_RUNTIME_DIR``, no ``TMPDIR`` (the test's would name a folder outside the tmpfs)."""
    dropped = ("HOME", "XDG_RUNTIME_DIR", "TMPDIR", "PYTEST_CURRENT_TEST")
    env = {k: v for k, v in user_env().items() if k not in dropped and not k.startswith("WKR_")}
    return {**env, "PYTHONDONTWRITEBYTECODE": "1", **(extra or {})}


class Container:
    """``argv`` as a container's entry point; see the module docstring. Its output (stdout
    and stderr) goes to ``log``, a file outside the container."""

    def __init__(self, argv: Sequence[str], log: Path, *, tmpfs: bool = True,
                 env: dict[str, str] | None = None) -> None:
        self.log = log
        self.env = container_env(env)
        with open(log, "wb") as out:
            self.outer = subprocess.Popen(
                ["unshare", "--mount", "--pid", "--fork", "--kill-child", "--mount-proc",
                 "sh", "-c", _MOUNTS + 'exec "$@"', "sh", "tmpfs" if tmpfs else "no-tmpfs",
                 *_USER, *argv],
                cwd=ROOT, env=self.env, stdout=out, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL)
        #: PID 1 of the container, as this (the host's) PID namespace numbers it.
        self.pid1: int = wait_until(self._first_child, 15, what="the container's PID 1")

    def _first_child(self) -> int | None:
        children = _children(self.outer.pid)
        return children[0] if children else None

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def processes(self) -> list[tuple[int, int, str, str]]:
        """Every process in the container below PID 1: ``(pid, ppid, state, name)``, host
        pids; state ``Z`` is a zombie, a dead process nobody reaped."""
        found, todo = [], [self.pid1]
        while todo:
            parent = todo.pop()
            for pid in _children(parent):
                stat = _stat(pid)
                if stat is not None:
                    found.append((pid, parent, stat[1], stat[0]))
                    todo.append(pid)
        return found

    def zombies(self) -> list[tuple[int, int, str, str]]:
        return [p for p in self.processes() if p[2] == "Z"]

    def exec(self, argv: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``docker exec``: ``argv`` in the container's mount and PID namespaces, as its user."""
        return subprocess.run(
            ["nsenter", "-t", str(self.pid1), "-m", "-p", "--wd=" + str(ROOT), *_USER, *argv],
            env=self.env,
            capture_output=True, text=True, timeout=timeout)

    def signal(self, sig: int) -> None:
        """``docker stop``'s signal (or ``docker kill -s``) to PID 1."""
        os.kill(self.pid1, sig)

    def wait(self, timeout: float) -> int:
        """PID 1's exit code (``unshare`` passes it on)."""
        return self.outer.wait(timeout)

    def close(self) -> None:
        if self.outer.poll() is None:
            try:
                os.kill(self.pid1, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.outer.wait(30)


def _children(pid: int) -> list[int]:
    found: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return found
    for task in tasks:
        try:
            found += [int(p) for p in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
        except OSError:
            continue
    return found


def _stat(pid: int) -> tuple[str, str] | None:
    """``(name, state)`` of ``pid``, or None once it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = text[text.index("(") + 1:text.rindex(")")]
    return name, text[text.rindex(")") + 2]


class MemoryCgroup:
    """A memory cgroup of its own with a limit, as ``docker run --memory`` gives a container:
    cgroup v2 where its memory controller can be delegated to a child, else v1's hierarchy.
    :attr:`procs` is the file a process writes its pid to in order to join it."""

    def __init__(self, limit: int) -> None:
        self.path = _new_memory_cgroup(f"wkr-test-{os.getpid()}-{uuid.uuid4().hex[:6]}", limit)
        self.procs = self.path / "cgroup.procs"

    def close(self) -> None:
        """Kill whatever is still in it (a test that failed midway), then remove it."""
        for pid in self.procs.read_text().split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        wait_until(lambda: not self.procs.read_text().split(), 15, what="an empty cgroup")
        self.path.rmdir()


def memory_cgroup_unavailable() -> str | None:
    """Why no memory cgroup with a limit can be made here (so the test skips), or None."""
    reason = unavailable_reason()
    if reason is not None:
        return reason
    try:
        MemoryCgroup(1 << 30).close()
    except (OSError, ValueError, AssertionError) as exc:
        return f"no writable cgroup memory controller (v2 or v1) here: {exc}"
    return None


def _new_memory_cgroup(name: str, limit: int) -> Path:
    own = {c: p for _, c, p in (line.split(":", 2) for line in
                                 Path("/proc/self/cgroup").read_text().splitlines())}
    v1 = own.get("memory") or next((p for c, p in own.items() if "memory" in c.split(",")), None)
    if v1 is not None and Path("/sys/fs/cgroup/memory").is_dir():
        path = Path("/sys/fs/cgroup/memory", v1.lstrip("/"), name)
        path.mkdir()
        (path / "memory.limit_in_bytes").write_text(str(limit))
        if (path / "memory.memsw.limit_in_bytes").exists():  # no swapping out of the limit
            (path / "memory.memsw.limit_in_bytes").write_text(str(limit))
        (path / "memory.swappiness").write_text("0")
        return path
    parent = Path("/sys/fs/cgroup", own.get("", "/").lstrip("/"))
    if "memory" not in (parent / "cgroup.subtree_control").read_text().split():
        raise OSError(f"{parent} does not delegate the memory controller to its children")
    path = parent / name
    path.mkdir()
    (path / "memory.max").write_text(str(limit))
    if (path / "memory.swap.max").exists():  # no swapping out of the limit
        (path / "memory.swap.max").write_text("0")
    return path
