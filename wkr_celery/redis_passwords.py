"""Passwords of the embedded Redis servers this user runs, found by their address.

The embedded Redis requires a random password (see :mod:`wkr_celery.redis_embedded`). So that a
client of the same user needs only the address (``WKRClient(port=8996)``, ``wkr-serving-check
-port_in 8996``), the process that starts a server writes its password to a per-user index, one
file per address, and removes it at stop::

    $XDG_RUNTIME_DIR/wkr-celery/redis-127.0.0.1-8996     (else ~/.cache/wkr-celery/…)

A user with no writable home (a container's arbitrary uid, or a read-only root filesystem with
a tmpfs at /tmp) has it in ``<tempdir>/wkr-celery-<uid>`` instead, so ``wkr-serving-check``
run in the container still finds the service. The folder is 0700 and each file 0600, so other
local users cannot read them. A file also names the pid of the process that wrote it: once
that process is gone (and its Redis with it, which dies with its parent), the entry is ignored,
so a killed service never hands its old password to whatever listens on the port next.
:func:`wkr_celery.connections.with_local_password` is the one reader.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
import tempfile
from pathlib import Path

from .errors import ConfigError
from .processes import pid_alive, private_dir

__all__ = ["LOOPBACK_HOSTS", "PASSWORD_FILE", "index_dir", "index_dirs", "lookup", "remember",
           "forget", "new_password", "data_dir_password", "check_password"]

log = logging.getLogger("wkr_celery.redis")

#: Host names that mean this machine, the only place an embedded Redis listens. 0.0.0.0 is the
#: seed guide's client address (``WKRClient(ip='0.0.0.0', …)``): Linux connects it to loopback.
LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0"})

#: The file in a ``-data_dir`` that keeps its Redis password across restarts.
PASSWORD_FILE = "wkr-redis.password"


def index_dir() -> Path:
    """The per-user folder of the index: ``$XDG_RUNTIME_DIR/wkr-celery`` when that runtime
    folder exists (it is private and cleared at logout), else ``~/.cache/wkr-celery``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR", "")
    base = Path(runtime) if runtime and os.path.isdir(runtime) else Path.home() / ".cache"
    return base / "wkr-celery"


def index_dirs() -> list[Path]:
    """The folders the index may be in, in the order :func:`remember` tries them: the
    :func:`index_dir`, then ``<tempdir>/wkr-celery-<uid>`` for a user whose home cannot be
    written (``docker run --read-only --tmpfs /tmp``, an arbitrary uid whose home is ``/``)."""
    folders = []
    for where in (index_dir, _temporary_index_dir):
        try:
            folders.append(where())
        except (OSError, RuntimeError):  # no home for this uid; no usable temporary folder
            continue
    return folders


def _temporary_index_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"wkr-celery-{os.getuid()}"


def _entry(folder: Path, host: str, port: int) -> Path:
    host = "127.0.0.1" if host in LOOPBACK_HOSTS else host
    return folder / f"redis-{host}-{port}"


def _private(path: Path) -> bool:
    """Whether ``path`` belongs to this user and no one else may read or write it."""
    info = path.lstat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o077 and not stat.S_ISLNK(
        info.st_mode)


def remember(host: str, port: int, password: str) -> None:
    """Write the index entry of the Redis on ``host:port`` (0600, atomically) in the first of
    :func:`index_dirs` that takes it, and remove the entries of writers that are gone (killed
    services) on the way."""
    failures = []
    for folder in index_dirs():
        try:
            _write_entry(folder, host, port, password)
            return
        except OSError as exc:
            failures.append(f"{folder}: {exc.strerror or exc}")
    log.warning("could not record the password of Redis on %s:%d for local clients (%s); "
                "give it to them with -redis_password or in the URL", host, port,
                "; ".join(failures) or "no folder for the index")


def _write_entry(folder: Path, host: str, port: int, password: str) -> None:
    folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    if folder.lstat().st_uid == os.getuid():
        folder.chmod(0o700)
    if not _private(folder):
        raise OSError(f"{folder} is not a private folder of this user")
    target = _entry(folder, host, port)
    temporary = target.with_name(f".{target.name}.{os.getpid()}")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                         0o600)
    with os.fdopen(descriptor, "w") as handle:
        json.dump({"pid": os.getpid(), "password": password}, handle)
    os.replace(temporary, target)
    _remove_stale(folder)


def _remove_stale(folder: Path) -> None:
    for entry in folder.glob("redis-*"):
        try:
            if not pid_alive(int(json.loads(entry.read_text())["pid"])):
                entry.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            continue


def forget(host: str, port: int) -> None:
    """Remove the index entry of ``host:port`` if this process wrote it."""
    for folder in index_dirs():
        try:
            target = _entry(folder, host, port)
            if json.loads(target.read_text()).get("pid") == os.getpid():
                target.unlink()
        except (OSError, ValueError, AttributeError):
            continue


def lookup(host: str, port: int) -> str | None:
    """The password of the embedded Redis on ``host:port`` that a live process of this user
    started, else ``None`` (no entry, someone else's file, or its writer is gone)."""
    if host not in LOOPBACK_HOSTS:
        return None
    for folder in index_dirs():
        try:
            target = _entry(folder, host, port)
            if not (_private(target.parent) and _private(target)):
                continue
            entry = json.loads(target.read_text())
            pid, password = int(entry["pid"]), str(entry["password"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if pid_alive(pid):
            return password
    return None


def new_password() -> str:
    """A random password: 256 bits, URL-safe, so it goes into a ``redis://`` URL as is."""
    return secrets.token_urlsafe(32)


def data_dir_password(data_dir: str) -> str:
    """The password kept in ``data_dir`` (:data:`PASSWORD_FILE`, 0600), made on first use, so
    a restart on the same data (with its append-only file) keeps the same password."""
    path = Path(data_dir) / PASSWORD_FILE
    private_dir(data_dir)
    try:
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    except FileExistsError:
        password = path.read_text().strip()
        if password:
            path.chmod(0o600)
            return password
        raise ConfigError(f"{path} is empty; delete it to have a new password made") from None
    password = new_password()
    with os.fdopen(descriptor, "w") as handle:
        handle.write(password + "\n")
    return password


def check_password(password: str) -> str:
    """``password`` if Redis's config file can hold it; a control character cannot."""
    if any(ord(c) < 32 or ord(c) == 127 for c in password):
        raise ConfigError("redis_password must not contain control characters (newline, tab…)")
    return password
