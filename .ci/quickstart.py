"""Walk the README's quickstart as a new user does, in the README's own words.

Takes the Quickstart's install-and-run command and its client snippet out of README.md (so CI
changes when the README does), then:

1. runs the command as written with bash from the repository root, inside a pseudo-terminal
   that is its controlling terminal, as a user's shell would (a venv with only ``pip install
   .``); the ports come from ``WKR_PORT_IN``/``WKR_PORT_OUT`` so the command's text is unchanged;
2. runs the client snippet as written with the venv's Python, its ports replaced by those, and
   checks that it prints what its comment says;
3. presses Ctrl+C in that terminal and checks the service stops gracefully and in time.

``python3 .ci/quickstart.py test-command`` prints the README's test command instead (the lines
of its test block that are not ``apt-get``, which .ci/run handles itself).
Standard library only: it runs before anything is installed.
"""

from __future__ import annotations

import os
import pty
import re
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SERVE_TIMEOUT = 900  # pip install . on a clean machine, then the workers' start
STOP_TIMEOUT = 30
#: Imports every module of every installed top-level package of the distribution.
IMPORT_ALL = """
import importlib, importlib.metadata, pkgutil
tops = (importlib.metadata.distribution("wkr-celery").read_text("top_level.txt") or "wkr_celery").split()
names = []
for top in tops:
    package = importlib.import_module(top)
    names += [top] + [m.name for m in pkgutil.walk_packages(package.__path__, top + ".")
                      if not m.name.endswith(".__main__")]
for name in names:
    importlib.import_module(name)
print(f"imported {len(names)} modules of {tops}")
"""
GRACEFUL_STOP = 15  # seconds: a stop with no batch in predict takes one or two


def readme_blocks() -> tuple[str, str, str]:
    """(install-and-run command, client snippet, test command) of the Quickstart section."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    bash = re.findall(r"```bash\n(.*?)```", section, re.S)
    python = re.findall(r"```python\n(.*?)```", section, re.S)
    if len(bash) != 2 or len(python) != 1:
        sys.exit("README's Quickstart must hold two bash blocks (run, test) and one python block")
    test = "\n".join(line.split("#", 1)[0].rstrip() for line in bash[1].splitlines()
                     if not line.startswith("apt-get"))
    return bash[0].strip(), python[0], test.strip()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Terminal:
    """A command run by bash in a new session whose controlling terminal is a pty we hold."""

    def __init__(self, command: str, env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        self.output = bytearray()
        self.proc = subprocess.Popen(
            ["bash", "-c", command], cwd=ROOT, env=env, stdin=slave, stdout=slave,
            stderr=slave, start_new_session=True,
            preexec_fn=lambda: __import__("fcntl").ioctl(0, __import__("termios").TIOCSCTTY, 0))
        os.close(slave)

    def read(self, seconds: float) -> None:
        """Collect what the terminal shows for up to ``seconds``."""
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            ready, _, _ = select.select([self.master], [], [], left)
            if not ready:
                return
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # the terminal closed: every process on it has exited
                return
            if not chunk:
                return
            self.output += chunk
            sys.stdout.buffer.write(chunk)
            sys.stdout.flush()

    def ctrl_c(self) -> None:
        os.write(self.master, b"\x03")


def main() -> int:
    run, snippet, test = readme_blocks()
    if sys.argv[1:] == ["test-command"]:
        print(test)
        return 0
    port_in, port_out = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("WKR_", "VIRTUAL_ENV"))}
    env.pop("PYTHONPATH", None)
    env.update(WKR_PORT_IN=str(port_in), WKR_PORT_OUT=str(port_out), TERM="dumb")
    print(f"--- quickstart: {run!r} with WKR_PORT_IN={port_in} WKR_PORT_OUT={port_out}", flush=True)
    term = Terminal(run, env)
    python = ROOT / ".venv" / "bin" / "python"
    client = snippet.replace("port=8996", f"port={port_in}").replace("port_out=8998",
                                                                      f"port_out={port_out}")
    expected = re.findall(r"print\(.*\)\s+# (.+)", snippet)
    deadline = time.monotonic() + SERVE_TIMEOUT
    try:
        while True:  # until the service answers; the README's snippet waits 10 s at most
            term.read(2.0)
            if term.proc.poll() is not None:
                print(f"--- the quickstart command exited with {term.proc.returncode}")
                return 1
            if python.exists():
                probe = subprocess.run(
                    [str(python), "-c", "from wkr_celery.client import WKRClient; "
                     f"WKRClient(port={port_in}, port_out={port_out}, connect_timeout=2).close()"],
                    cwd=ROOT, env=env, capture_output=True, timeout=60)
                if probe.returncode == 0:
                    break
            if time.monotonic() > deadline:
                print("--- the service did not answer in time")
                return 1
        print("--- importing every module of the package in the bare venv", flush=True)
        imported = subprocess.run([str(python), "-c", IMPORT_ALL], cwd="/", env=env, timeout=300,
                                  capture_output=True, text=True)
        print(imported.stdout + imported.stderr)
        if imported.returncode != 0:
            return 1
        print("--- running the README's client snippet", flush=True)
        done = subprocess.run([str(python), "-c", client], cwd=ROOT, env=env, timeout=300,
                              capture_output=True, text=True)
        print(done.stdout + done.stderr)
        if done.returncode != 0 or [line.strip() for line in done.stdout.splitlines()] != expected:
            print(f"--- the snippet failed or printed other than {expected}")
            return 1
        print("--- Ctrl+C", flush=True)
        started, mark = time.monotonic(), len(term.output)
        term.ctrl_c()
        while term.proc.poll() is None and time.monotonic() - started < STOP_TIMEOUT:
            term.read(0.5)
        term.read(0.5)
        took = time.monotonic() - started
        if term.proc.poll() is None:
            print(f"--- still running {STOP_TIMEOUT}s after Ctrl+C")
            return 1
        log = term.output[mark:].decode(errors="replace")  # what it showed after Ctrl+C
        problems = [line for line in log.splitlines()
                    if re.search(r"\bERROR\b|Traceback|killing|restarting in|unreachable", line)]
        if took > GRACEFUL_STOP:
            problems.append(f"the stop took {took:.1f}s")
        if term.proc.returncode != 0 or not re.search(r"service '.+' stopped", log) or problems:
            print(f"--- not a graceful stop: exit {term.proc.returncode}; seen:")
            print("\n".join(problems))
            return 1
        print(f"--- quickstart passed: served, answered, stopped gracefully in {took:.1f}s")
        return 0
    finally:
        if term.proc.poll() is None:
            os.killpg(term.proc.pid, signal.SIGKILL)
            term.proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
