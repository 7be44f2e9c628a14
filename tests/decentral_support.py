"""Decentralize test support: an HTTP sink for results, and centrals run as real processes."""

from __future__ import annotations

import json
import signal
import subprocess
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from wkr_celery.decentral import ControlClient

from .helpers import ROOT
from .scripts import script, user_env


class Sink:
    """A real HTTP server on 127.0.0.1 that keeps every JSON body POSTed to it, in order."""

    def __init__(self, port: int = 0) -> None:
        self.posts: list[dict[str, Any]] = []
        self._cond = threading.Condition()
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with sink._cond:
                    sink.posts.append(body)
                    sink._cond.notify_all()
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/result"

    def events(self, kind: str) -> list[dict[str, Any]]:
        with self._cond:
            return [p for p in self.posts if p.get("event") == kind]

    def wait(self, predicate: Callable[[Sink], Any], timeout: float = 30.0,
             what: str = "sink condition") -> Any:
        """Wait until ``predicate(sink)`` is truthy; re-checked on every POST."""
        with self._cond:
            ok = self._cond.wait_for(lambda: predicate(self), timeout)
        if not ok:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; "
                                 f"sink got {self.posts[-10:]}")
        return ok

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@dataclass
class Central:
    """A ``wkr-decentral-start`` process."""

    name: str
    redis_url: str
    log_dir: Path
    proc: subprocess.Popen[bytes]
    stdout: Path
    connection: list[str] = field(default_factory=list)

    def control(self, timeout: float = 30.0) -> ControlClient:
        return ControlClient(self.name, self.redis_url, self.redis_url, timeout=timeout)

    def status(self) -> dict[str, Any]:
        with self.control() as control:
            reply = control.send("status")
        assert reply["ok"], reply
        return dict(reply["status"])

    def cached_status(self) -> dict[str, Any] | None:
        with self.control() as control:
            return control.cached_status()

    def command(self, command: str, *args: str,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """``wkr-decentral-<command>`` aimed at this central."""
        return run_cli(command, [*self.connection, *args], timeout=timeout)

    def running_units(self, count: int) -> Callable[[], dict[str, Any] | None]:
        """A predicate: the status once exactly ``count`` units are running, else None."""
        def check() -> dict[str, Any] | None:
            if self.proc.poll() is not None:
                raise AssertionError(f"central exited with {self.proc.returncode}:\n{self.log()}")
            status = self.cached_status()
            if status and status["totals"]["units"] == count and \
                    status["totals"]["running"] == count:
                return status
            return None
        return check

    def log(self) -> str:
        parts = [self.stdout.read_text(errors="replace") if self.stdout.exists() else ""]
        for suffix in (".log", ".err"):
            path = self.log_dir / f"{self.name}{suffix}"
            if path.exists():
                parts.append(path.read_text(errors="replace"))
        return "\n".join(parts)

    def err(self) -> str:
        path = self.log_dir / f"{self.name}.err"
        return path.read_text(errors="replace") if path.exists() else ""

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
                raise AssertionError(f"central {self.name} did not stop in {timeout}s") from None
        return int(self.proc.returncode)


def child_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The user's environment (venv on PATH, no PYTHONPATH) plus ``extra``."""
    return user_env(extra)


def start_central(worker: str, name: str, redis_url: str, log_dir: Path, *args: str,
                  env: dict[str, str] | None = None, connection: Sequence[str] | None = None,
                  cwd: Path = ROOT) -> Central:
    """``wkr-decentral-start worker …`` typed in ``cwd``, which must hold ``worker``'s module."""
    connection = list(connection if connection is not None
                      else ["-name", name, "-broker_url", redis_url])
    stdout = log_dir / f"{name}.stdout"
    command = [script("wkr-decentral-start"), worker, *connection, "-log_dir", str(log_dir),
               *args]
    with open(stdout, "wb") as out:
        proc = subprocess.Popen(command, cwd=cwd, env=child_env(env), stdout=out,
                                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return Central(name, redis_url, log_dir, proc, stdout, connection)


def run_cli(command: str, args: Sequence[str], timeout: float = 60.0,
            ) -> subprocess.CompletedProcess[str]:
    """Run console script ``wkr-decentral-<command>`` (status, switch…) with ``args``."""
    return subprocess.run([script(f"wkr-decentral-{command}"), *args], cwd=ROOT,
                          env=child_env(), capture_output=True, text=True, timeout=timeout)
