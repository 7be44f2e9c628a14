"""The control channel: commands to a central and its answers, through the same Redis.

A command is a JSON message ``{"id", "command", "args", "expires", "wait"}`` pushed onto
``wkr:decentral:<name>:control`` (``-port``); the central pops them in order and answers each on
its own list ``…:reply:<id>`` (``-port_out``), once the change is done or ``wait`` seconds have
passed. A list rather than pub/sub, so a command sent while the central reconnects still
arrives; ``expires`` drops one nobody was waiting for any more.

The central holds ``…:owner`` (a token that expires unless renewed), so a second central of the
same name refuses to start, and a command is only sent when a central is there to take it.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, TypeVar, cast

from .. import scripts
from ..clock import wall_time
from ..connections import REDIS_ERRORS, connect, explain, redacted
from ..errors import ConfigError, ServiceUnavailable
from ..keys import DecentralKeys

T = TypeVar("T")

__all__ = ["ControlServer", "ControlClient", "OWNER_TTL"]

log = logging.getLogger("wkr_celery.decentral")

#: Seconds the owner token and the status live without a renewal (renewed every second).
OWNER_TTL = 5
_REPLY_TTL = 60
_POLL = 1.0


class ControlServer:
    """The central's end: takes commands into ``inbox``, writes replies and the status."""

    def __init__(self, name: str, control_url: str, status_url: str,
                 inbox: queue.Queue[dict[str, Any]] | None = None, *,
                 sentinel_master: str = "") -> None:
        self.keys = DecentralKeys(name)
        self.control_url, self.status_url = control_url, status_url
        self._control = connect(control_url, blocking_timeout=_POLL,
                                sentinel_master=sentinel_master)
        self._status = self._control if status_url == control_url else connect(
            status_url, sentinel_master=sentinel_master)
        self._renew = self._status.register_script(scripts.RENEW_OWNER)
        self._release = self._status.register_script(scripts.RELEASE_OWNER)
        self.token = uuid.uuid4().hex
        self.inbox: queue.Queue[dict[str, Any]] = queue.Queue() if inbox is None else inbox
        self._closing = threading.Event()
        self._thread: threading.Thread | None = None

    def claim(self, wait: float = OWNER_TTL + 1) -> None:
        """Become the central of this name; waits out the token of one that died."""
        deadline = time.monotonic() + wait
        while True:
            try:
                if self._status.set(self.keys.owner, self.token, nx=True, ex=OWNER_TTL):
                    return
            except REDIS_ERRORS as exc:
                raise ServiceUnavailable(
                    f"control Redis {redacted(self.status_url)} is not reachable: {exc}") from exc
            if time.monotonic() >= deadline or self._owner_alive():
                raise ConfigError(
                    f"a decentralize central named {self.keys.name!r} already runs on "
                    f"{redacted(self.status_url)}; stop it or pick another -name")
            time.sleep(0.2)

    def _owner_alive(self) -> bool:
        """The holder wrote its status within two seconds: alive, no use waiting it out."""
        try:
            raw = self._status.get(self.keys.status)
            return raw is not None and wall_time() - float(json.loads(raw)["updated"]) < 2.0
        except (ValueError, KeyError, TypeError, *REDIS_ERRORS):
            return False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._listen, daemon=True,
                                        name="wkr-decentral-control")
        self._thread.start()

    def _listen(self) -> None:
        delay = 0.05
        while not self._closing.is_set():
            try:
                item = self._control.blpop([self.keys.control], timeout=_POLL)
            except REDIS_ERRORS as exc:
                log.warning("control Redis unreachable (%s); retrying in %.2fs", exc, delay)
                self._closing.wait(delay)
                delay = min(delay * 2, 2.0)
                continue
            delay = 0.05
            if item is None:
                continue
            try:
                message = json.loads(item[1])
                command_id, expires = str(message["id"]), float(message.get("expires", 0))
            except (ValueError, KeyError, TypeError, AttributeError, RecursionError):
                log.error("dropped an unreadable control message: %r", item[1][:200])
                continue
            if expires and wall_time() > expires:
                log.warning("dropped command %s (%s): its sender stopped waiting",
                            command_id, message.get("command"))
                continue
            self.inbox.put(message)

    def reply(self, command_id: str, payload: dict[str, Any]) -> None:
        key = self.keys.reply(command_id)
        try:
            pipe = self._status.pipeline(transaction=False)
            pipe.rpush(key, json.dumps(payload, default=str))
            pipe.expire(key, _REPLY_TTL)
            pipe.execute()
        except REDIS_ERRORS as exc:
            log.error("could not answer command %s: %s", command_id, exc)

    def publish(self, status: dict[str, Any]) -> None:
        """Write the status and renew the owner token (every second, from the main loop)."""
        try:
            if not self._renew(keys=[self.keys.owner], args=[self.token, OWNER_TTL]):
                # Expired while Redis was away: take it back unless another central has it.
                if not self._status.set(self.keys.owner, self.token, nx=True, ex=OWNER_TTL):
                    log.error("another central took the name %r", self.keys.name)
            self._status.set(self.keys.status, json.dumps(status, default=str), ex=OWNER_TTL)
        except REDIS_ERRORS as exc:
            log.warning("could not publish the status: %s", exc)

    def close(self) -> None:
        self._closing.set()
        if self._thread is not None:
            self._thread.join(_POLL + 11)
        try:
            self._release(keys=[self.keys.owner, self.keys.status], args=[self.token])
        except REDIS_ERRORS as exc:
            log.warning("could not release the name %r: %s", self.keys.name, exc)
        self._control.close()
        if self._status is not self._control:
            self._status.close()


class ControlClient:
    """The commands' end: send one command and wait for the central's answer."""

    def __init__(self, name: str, control_url: str, status_url: str,
                 timeout: float = 30.0, *, sentinel_master: str = "") -> None:
        self.keys = DecentralKeys(name)
        self.control_url, self.status_url = control_url, status_url
        self.timeout = timeout
        self._control = connect(control_url, sentinel_master=sentinel_master)
        self._status = (self._control if status_url == control_url
                        else connect(status_url, blocking_timeout=_POLL,
                                     sentinel_master=sentinel_master))

    def alive(self) -> bool:
        """True when a central of this name holds its token."""
        return bool(self._status.exists(self.keys.owner))

    def cached_status(self) -> dict[str, Any] | None:
        """The status the central wrote last (at most a second old), without asking it."""
        raw = self._status.get(self.keys.status)
        return None if raw is None else json.loads(raw)

    def send(self, command: str, **args: Any) -> dict[str, Any]:
        """The central's reply; ``ServiceUnavailable`` when no central answers in time, or a
        Redis it talks through is not reachable (that one named)."""
        where = f"{self.keys.name!r} on {redacted(self.status_url)}"
        if not self._through("status", self.status_url, self.alive):
            raise ServiceUnavailable(f"no decentralize central named {where}")
        command_id = uuid.uuid4().hex
        message = json.dumps({
            "id": command_id, "command": command, "args": args,
            "expires": wall_time() + self.timeout, "wait": max(0.5, self.timeout - 1.0),
        })
        self._through("control", self.control_url,
                      lambda: self._control.rpush(self.keys.control, message))
        reply = self._through("status", self.status_url,
                              lambda: self._wait(self.keys.reply(command_id)))
        if reply is None:
            self._through("control", self.control_url,
                          lambda: self._control.lrem(self.keys.control, 1, message))
            raise ServiceUnavailable(
                f"no decentralize central named {where} answered {command!r} within "
                f"{self.timeout:g}s")
        return json.loads(reply)

    def _through(self, role: str, url: str, action: Callable[[], T]) -> T:
        """``action`` on the ``role`` Redis at ``url``; a connection error names that one
        (the control and status Redis differ with ``-port`` and ``-port_out``)."""
        try:
            return action()
        except REDIS_ERRORS as exc:
            raise ServiceUnavailable(
                f"no decentralize central named {self.keys.name!r} can be reached: its {role} "
                f"Redis {redacted(url)}: {explain(exc)}") from exc

    def _wait(self, key: str) -> bytes | None:
        deadline = time.monotonic() + self.timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            # The status connection's socket timeout allows blocks of _POLL seconds.
            item = self._status.blpop([key], timeout=max(0.01, min(_POLL, left)))
            if item is not None:
                self._status.delete(key)
                return cast(bytes, item[1])

    def close(self) -> None:
        self._control.close()
        if self._status is not self._control:
            self._status.close()

    def __enter__(self) -> ControlClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
