"""Logging: ``<log_dir>/<name>.log`` gets everything from INFO, ``<name>.err`` errors only.

Worker processes write plain lines to stderr that start with the level name; with a log dir,
the supervisor is the single writer of both files (so rotation never races between processes)
and routes each line by that level. Continuation lines (tracebacks) follow the level of the
line they continue.

So a line that starts with a level name begins a record, and a record's text must not forge
one: task ids, client ids and error texts come from whoever writes to the broker or calls the
API, and a task id holding a newline and ``CRITICAL …`` wrote a line of its sender's choosing
(routed to ``.err``), with terminal escape sequences besides. :class:`LineFormatter` writes
control characters other than newline and tab as ``\\xNN`` (``\\u2028``) and indents a continuation line
that starts with a level name; tracebacks and other multi-line records read as before.
"""

from __future__ import annotations

import logging
import logging.handlers
import os
import re
import sys
from typing import IO

from .processes import writable_dir

__all__ = ["LINE_FORMAT", "LineFormatter", "configure_stderr", "keep_own_logs", "LogRouter",
           "ErrorsToTerminal"]

LINE_FORMAT = "%(levelname)s %(asctime)s %(processName)s[%(process)d] %(name)s: %(message)s"
_LEVELS = {name: getattr(logging, name) for name in ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")}
#: C0 controls but tab and newline, DEL, C1 controls (CSI, NEL) and Unicode line separators.
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u2028\u2029]")
_FORGED_HEAD = re.compile(rf"\n(?=(?:{'|'.join(_LEVELS)}) )")
#: Loggers a worker process writes itself (:func:`keep_own_logs`): ours, and Celery's.
_OWN_LOGGERS = ("wkr_celery", "celery")
_own_level: int | None = None  # set once this process is a worker whose logging is ours
_MAX_BYTES = 50 * 1024 * 1024
_BACKUPS = 5


class LineFormatter(logging.Formatter):
    """:data:`LINE_FORMAT` lines that no text inside a record can break out of (see above)."""

    def __init__(self, fmt: str = LINE_FORMAT) -> None:
        super().__init__(fmt)

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        if _CONTROL.search(text):
            text = _CONTROL.sub(_escaped, text)
        if "\n" in text:
            text = _FORGED_HEAD.sub("\n  ", text)
        return text


def _escaped(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def configure_stderr(level: int = logging.INFO) -> None:
    """Root logging to stderr in the line format the supervisor routes."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter())
    root.addHandler(handler)
    root.setLevel(level)


class _OwnLines(logging.StreamHandler):  # type: ignore[type-arg]
    """The stderr handler :func:`keep_own_logs` puts on our loggers, found again by its class."""


def keep_own_logs(level: int | None = None) -> None:
    """In a worker process, our loggers (and Celery's) write their lines themselves, not
    through the root logger, and stay enabled.

    The user's model runs in the worker process, and model code configures logging. A
    ``logging.basicConfig(force=True)`` replaced the root's handlers: the worker's lines lost the
    level name the supervisor routes them by (its errors no longer reached ``.err``), and a
    root level of WARNING hid its INFO lines. ``logging.config.dictConfig`` disables every
    existing logger it does not name. Called with the level when the worker sets up its
    logging, and again without one after ``get_model`` (undoing a ``dictConfig`` there); a
    no-op in a process that never set it up, such as a test runner's."""
    global _own_level
    if level is not None:
        _own_level = level
    if _own_level is None:
        return
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if isinstance(logger, logging.Logger) and name.partition(".")[0] in _OWN_LOGGERS:
            logger.disabled = False
    for name in _OWN_LOGGERS:
        logger = logging.getLogger(name)
        logger.disabled, logger.propagate = False, False
        if level is not None:
            logger.setLevel(level)
        if not any(isinstance(handler, _OwnLines) for handler in logger.handlers):
            handler = _OwnLines(sys.stderr)
            handler.setFormatter(LineFormatter())
            logger.addHandler(handler)


class LogRouter:
    """Writes lines to the rotated ``.log`` / ``.err`` pair of one service."""

    def __init__(self, log_dir: str, name: str) -> None:
        writable_dir(log_dir, "-log_dir")
        self.log_path = os.path.join(log_dir, f"{name}.log")
        self.err_path = os.path.join(log_dir, f"{name}.err")
        fmt = logging.Formatter("%(message)s")
        self._log = logging.handlers.RotatingFileHandler(
            self.log_path, maxBytes=_MAX_BYTES, backupCount=_BACKUPS)
        self._err = logging.handlers.RotatingFileHandler(
            self.err_path, maxBytes=_MAX_BYTES, backupCount=_BACKUPS)
        for handler in (self._log, self._err):
            handler.setFormatter(fmt)
        self._logger = logging.getLogger(f"wkr_celery.router.{name}")
        self._logger.propagate = False
        self._logger.setLevel(logging.DEBUG)
        self._log.setLevel(logging.INFO)
        self._err.setLevel(logging.ERROR)
        self._logger.addHandler(self._log)
        self._logger.addHandler(self._err)
        self._root_handler: logging.Handler | None = None

    def route_root(self) -> None:
        """Route this process's own records (the root logger's, at INFO and up) like the
        children's lines, until :meth:`close`: a supervisor run in a program that goes on after
        it stops (and starts another) must not leave its files on the program's root logger."""
        router = self

        class _Handler(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                router.write(self.format(record), record.levelno)

        self._root_handler = _Handler()
        self._root_handler.setFormatter(LineFormatter())
        root = logging.getLogger()
        root.addHandler(self._root_handler)
        root.setLevel(logging.INFO)

    def write(self, line: str, level: int) -> None:
        self._logger.log(level, line)

    def pump(self, stream: IO[bytes]) -> None:
        """Copy a child's stderr until it closes; run in a thread per child."""
        level = logging.INFO
        for raw in iter(stream.readline, b""):
            line = raw.decode(errors="replace").rstrip("\n")
            first = line.split(" ", 1)[0]
            if first in _LEVELS:
                level = _LEVELS[first]
            self.write(line, level)
        stream.close()

    def close(self) -> None:
        if self._root_handler is not None:
            logging.getLogger().removeHandler(self._root_handler)
        self._log.close()
        self._err.close()


class ErrorsToTerminal(logging.Handler):
    """With ``-log_dir``, a supervisor's errors (a worker or unit that failed to start or died,
    a REST API that exited) are also one line each on its terminal, naming the ``.err`` file
    that has the traceback: else a crash-looping service looks, there, like one that serves."""

    def __init__(self, prog: str, err_path: str) -> None:
        super().__init__(logging.ERROR)
        self.prog, self.err_path = prog, err_path

    def emit(self, record: logging.LogRecord) -> None:
        line = " ".join(record.getMessage().split())  # a user's exception text may span lines
        try:
            print(f"{self.prog}: {line} (details: {self.err_path})", file=sys.stderr, flush=True)
        except OSError:  # a terminal that is gone stops nothing
            pass
