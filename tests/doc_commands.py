"""The shell commands of README.md and docs/*.md, and a way to run them as a user types them.

A *command* is one line of a ```bash block, with ``\\``-continued lines (and a line ending in
``|``) joined and a trailing ``# comment`` dropped; a line that starts with ``#`` is the output
the doc shows for the command above it.

Commands run through ``bash -c`` exactly as written, in a pseudo-terminal of their own (so
Ctrl+C is a real Ctrl+C), with the venv's ``bin/`` first on ``PATH`` and no ``PYTHONPATH``,
after these substitutions and no others (:meth:`Substitutions.apply`):

- each port number the docs use (:data:`DOC_PORTS`) becomes one free port, the same one
  everywhere within a test, so a service and the commands that talk to it still agree;
- a Redis on another machine (:data:`REMOTE_REDIS`) becomes the Redis the test runs on;
- the example directories ``/tmp/log_dir``, ``/var/lib/wkr/linear`` and ``/tmp/torch-model``
  move into the test's temporary folder;
- a command that names no port at all while ``wkr-serving-start`` defaults to 8996/8998 gets
  those ports' substitutes through ``WKR_PORT_IN`` / ``WKR_PORT_OUT``, the variables its flag
  table documents.

They run in a *project folder* made for the test: a copy of ``examples/`` and links to the
repository's ``workers/`` and ``client/``, so ``cd examples && …`` and ``workers.linear.Worker``
resolve as in a checkout, while the files commands write (``run_script.sh``, ``body.msgpack``,
pid files, ``logs/``) stay out of the repository.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .helpers import ROOT, free_port
from .scripts import PtyProcess, user_env

__all__ = ["Command", "documented_commands", "Substitutions", "Shell", "Session", "make_project",
           "DOC_PORTS", "REMOTE_REDIS"]

DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]

#: Every port number the docs show, each replaced by a free port in a test.
DOC_PORTS = ("8996", "8998", "8900", "8901", "5555", "21324", "21326", "8000")

#: Redis servers the docs place on other machines, replaced by the test's own Redis.
REMOTE_REDIS = ("redis-host:6379", "10.0.0.5:6379")

_TEMP_DIRS = ("/tmp/log_dir", "/var/lib/wkr/linear", "/tmp/torch-model")


@dataclass(frozen=True)
class Command:
    doc: str  # "README.md", "docs/rest.md"
    text: str  # continuation lines joined, trailing comment dropped
    output: tuple[str, ...] = ()  # the "# …" lines the doc shows after it


def _strip_comment(line: str) -> str:
    """``line`` without a trailing ``# comment`` (a ``#`` that starts a word outside quotes)."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = ""
        elif char in "'\"":
            quote = char
        elif char == "#" and (i == 0 or line[i - 1].isspace()):
            return line[:i].rstrip()
    return line.rstrip()


def _open_quote(text: str) -> bool:
    try:
        shlex.split(text)
    except ValueError:  # "No closing quotation": the command goes on on the next line
        return True
    return False


def documented_commands() -> list[Command]:
    """Every command of every ```bash block, in doc order."""
    found: list[Command] = []
    for path in DOCS:
        doc = str(path.relative_to(ROOT))
        for block in re.findall(r"```bash\n(.*?)```", path.read_text(), flags=re.S):
            pending = ""
            for raw in block.splitlines():
                if pending and _open_quote(pending):
                    text = pending + "\n" + raw
                elif not pending and raw.lstrip().startswith("#"):
                    if found and found[-1].doc == doc:
                        last = found[-1]
                        found[-1] = Command(doc, last.text, (*last.output, raw.strip()[1:].strip()))
                    continue
                else:
                    line = _strip_comment(raw).strip()
                    if line.endswith("\\"):
                        pending += line[:-1].rstrip() + " "
                        continue
                    text = pending + line
                if text.endswith("|") or _open_quote(text):
                    pending = text + (" " if text.endswith("|") else "")
                    continue
                pending = ""
                if text.strip():
                    found.append(Command(doc, text.strip()))
    return found


@dataclass
class Substitutions:
    """The free port of each doc port, the test's Redis, and the test's temporary folder."""

    tmp: Path
    ports: dict[str, int] = field(default_factory=dict)
    redis: str = ""  # host:port of the Redis standing in for REMOTE_REDIS

    def port(self, doc_port: str) -> int:
        if doc_port not in self.ports:
            self.ports[doc_port] = free_port()
        return self.ports[doc_port]

    def apply(self, text: str) -> str:
        for remote in REMOTE_REDIS:
            if remote in text:
                text = text.replace(remote, self.redis or f"127.0.0.1:{self.port('8996')}")
        text = re.sub(r"\b(" + "|".join(DOC_PORTS) + r")\b",
                      lambda m: str(self.port(m.group(1))), text)
        for path in _TEMP_DIRS:
            text = text.replace(path, str(self.tmp / path.strip("/").replace("/", "_")))
        return text

    def env(self, text: str) -> dict[str, str]:
        """``WKR_PORT_IN``/``_OUT`` for a ``wkr-serving-*`` command that names no port."""
        if "wkr-serving-" in text and not re.search(r"-port_in|-broker_url|WKR_PORT", text):
            return {"WKR_PORT_IN": str(self.port("8996")), "WKR_PORT_OUT": str(self.port("8998"))}
        return {}


def make_project(tmp: Path) -> Path:
    """A folder laid out like a checkout: examples/ copied; workers/, client/, benchmarks/ linked."""
    project = tmp / "project"
    project.mkdir()
    shutil.copytree(ROOT / "examples", project / "examples",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("workers", "client", "benchmarks"):
        (project / name).symlink_to(ROOT / name)
    return project


class Shell(PtyProcess):
    """One command line running under ``bash -c`` in its own pseudo-terminal."""

    def __init__(self, text: str, cwd: Path, env: dict[str, str] | None = None) -> None:
        self.text = text
        super().__init__(["bash", "-c", text], cwd, user_env(env))

    def running(self) -> bool:
        """True while the command runs; fails the test, with its output, once it has exited."""
        if self.proc.poll() is not None:
            self._reader.join(5)
            raise AssertionError(f"{self.text!r} exited with {self.proc.returncode}:\n"
                                 f"{self.output[-3000:]}")
        return True

    def ctrl_c(self, timeout: float = 60.0) -> int:
        """Press Ctrl+C in the terminal; the exit status once everything has stopped."""
        self.press_ctrl_c()
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.text!r} did not stop on Ctrl+C in {timeout}s:\n"
                                 f"{self.output[-3000:]}") from None
        self._reader.join(10)
        return code

    def wait(self, timeout: float = 120.0) -> int:
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.text!r} did not finish in {timeout}s:\n"
                                 f"{self.output[-3000:]}") from None
        self._reader.join(10)
        return code

    def kill(self) -> None:
        """Last resort after a failure: SIGKILL the whole session's process group."""
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(10)

    def close(self) -> None:
        if self.proc.poll() is None:
            self.kill()
        self._close_terminal()


class Session:
    """Commands of one test: run in ``project``, services stopped with Ctrl+C afterwards."""

    def __init__(self, subs: Substitutions, project: Path) -> None:
        self.subs, self.project = subs, project
        self.services: list[Shell] = []

    def start(self, command: Command, cwd: Path | None = None) -> Shell:
        shell = Shell(self.subs.apply(command.text), cwd or self.project,
                      self.subs.env(command.text))
        self.services.append(shell)
        return shell

    def run(self, command: Command, cwd: Path | None = None, expect: int | None = 0,
            timeout: float = 120.0) -> str:
        """Run a one-shot command to its end; its output. ``expect=None``: any exit status."""
        shell = Shell(self.subs.apply(command.text), cwd or self.project,
                      self.subs.env(command.text))
        try:
            code = shell.wait(timeout)
        finally:
            shell.close()
        assert expect is None or code == expect, f"{command.text!r} exited {code}:\n{shell.output[-3000:]}"
        return shell.output

    def stop(self, shell: Shell) -> None:
        """Ctrl+C, as the docs say; the command must exit 0."""
        code = shell.ctrl_c()
        self.services.remove(shell)
        shell.close()
        assert code == 0, f"{shell.text!r} exited {code} on Ctrl+C:\n{shell.output[-3000:]}"

    def close(self) -> None:
        for shell in self.services:
            shell.close()
