"""Passwords of the embedded Redis servers this user runs, found by their address.

The embedded Redis requires a random password (see :mod:`wkr_celery.redis_embedded`). So that a
client of the same user needs only the address (``WKRClient(port=8996)``, ``wkr-serving-check
-port_in 8996``), the process that starts a server writes its password to a per-user index, one
file per address, and removes it at stop::

    $XDG_RUNTIME_DIR/wkr-celery/redis-127.0.0.1-8996     (else ~/.cache/wkr-celery/…)

The folder is 0700 and each file 0600, so other local users cannot read them. A file also names
the pid of the process that wrote it: once that process is gone (and its Redis with it, which
dies with its parent), the entry is ignored, so a killed service never hands its old password
to whatever listens on the port next. :func:`wkr_celery.connections.with_local_password` is the
one reader.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import stat
from pathlib import Path

from .errors import ConfigError
from .processes import pid_alive, private_dir

__all__ = ["LOOPBACK_HOSTS", "PASSWORD_FILE", "index_dir", "lookup", "remember", "forget",
           "new_password", "data_dir_password", "check_password"]

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


def _entry(host: str, port: int) -> Path:
    host = "127.0.0.1" if host in LOOPBACK_HOSTS else host
    return index_dir() / f"redis-{host}-{port}"


def _private(path: Path) -> bool:
    """Whether ``path`` belongs to this user and no one else may read or write it."""
    info = path.lstat()
    return info.st_uid == os.getuid() and not info.st_mode & 0o077 and not stat.S_ISLNK(
        info.st_mode)


def remember(host: str, port: int, password: str) -> None:
    """Write the index entry of the Redis on ``host:port`` (0600, atomically), and remove the
    entries of writers that are gone (killed services) on the way."""
    try:
        folder = index_dir()
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        if folder.lstat().st_uid == os.getuid():
            folder.chmod(0o700)
        if not _private(folder):
            raise OSError(f"{folder} is not a private folder of this user")
        target = _entry(host, port)
        temporary = target.with_name(f".{target.name}.{os.getpid()}")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW,
                             0o600)
        with os.fdopen(descriptor, "w") as handle:
            json.dump({"pid": os.getpid(), "password": password}, handle)
        os.replace(temporary, target)
        _remove_stale(folder)
    except (OSError, RuntimeError) as exc:
        log.warning("could not record the password of Redis on %s:%d for local clients (%s); "
                    "give it to them with -redis_password or in the URL", host, port, exc)


def _remove_stale(folder: Path) -> None:
    for entry in folder.glob("redis-*"):
        try:
            if not pid_alive(int(json.loads(entry.read_text())["pid"])):
                entry.unlink()
        except (OSError, ValueError, KeyError, TypeError):
            continue


def forget(host: str, port: int) -> None:
    """Remove the index entry of ``host:port`` if this process wrote it."""
    try:
        target = _entry(host, port)
        if json.loads(target.read_text()).get("pid") == os.getpid():
            target.unlink()
    except (OSError, RuntimeError, ValueError, AttributeError):
        pass


def lookup(host: str, port: int) -> str | None:
    """The password of the embedded Redis on ``host:port`` that a live process of this user
    started, else ``None`` (no entry, someone else's file, or its writer is gone)."""
    if host not in LOOPBACK_HOSTS:
        return None
    try:
        target = _entry(host, port)
        if not (_private(target.parent) and _private(target)):
            return None
        entry = json.loads(target.read_text())
        pid, password = int(entry["pid"]), str(entry["password"])
    except (OSError, RuntimeError, ValueError, KeyError, TypeError):
        return None
    return password if pid_alive(pid) else None


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
