"""The user's worker class, found from its ``module.Class`` path, for services and decentralize
alike (a ``WKRHardWorker`` subclass for the one, a ``WKRWorker`` subclass for the other; the
caller names which). It lives beside both, so a decentralize unit never imports the server.

A worker process is told which class to serve as text (``WKR_WORKER_CLASS``, a unit's spec), so
both ``wkr-serving-start`` and ``wkr-decentral-start`` load it with :func:`load_class`, and the
commands that write scripts for them (``wkr-serving-make``…) call it too, to refuse a class that
does not import before the script ever runs. :func:`class_path` goes the other way, for a class
object handed to ``WKRServer`` or ``WKRDecentralizeCentral``.

The current directory is importable, as the seed expects: a console script's ``sys.path`` starts
with its own ``bin/`` folder, not the folder it was typed in, so ``cd examples &&
wkr-serving-start server.Worker`` needs it put there.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import TypeVar

from .errors import ConfigError

__all__ = ["load_class", "class_path"]

T = TypeVar("T")


def load_class(path: str, base: type[T]) -> type[T]:
    """Import ``module.Class`` from ``path`` and check that it subclasses ``base``.

    Every way it can fail is a :class:`ConfigError` naming ``path``: no module part, a module
    that does not import (its own error quoted), no such class, a class of the wrong kind.
    """
    module_name, _, class_name = path.rpartition(".")
    if not module_name:
        raise ConfigError(f"worker class {path!r} must be module.Class, e.g. server.Worker")
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {module_name!r} of {path!r}: {exc}"
                          f"{_where_to_run(module_name, exc)}") from exc
    cls = getattr(module, class_name, None)
    if not (isinstance(cls, type) and issubclass(cls, base)):
        found = "nothing" if cls is None else repr(cls)
        raise ConfigError(f"{path!r} is not a {base.__name__} subclass (found {found} in "
                          f"{module_name!r})")
    return cls


def _where_to_run(module_name: str, exc: ImportError) -> str:
    """What to do when the module itself is not found from here (not a module it imports):
    the command was typed in another folder than the one that holds it."""
    top = module_name.split(".")[0]
    if not isinstance(exc, ModuleNotFoundError) or exc.name != top:
        return ""
    held = f"{top}/" if "." in module_name else f"{top}.py (or the package {top}/)"
    return f"; run the command in the folder that holds {held}, not in {os.getcwd()}"


def class_path(cls: type) -> tuple[str, list[str]]:
    """``module.Class`` of ``cls``, the form worker processes load with :func:`load_class`, and
    the folders they need on their import path for it: a class defined in the script being run
    (``__main__``) is found there under its file's name."""
    module = cls.__module__
    roots: list[str] = []
    if module == "__main__":
        main_file = getattr(sys.modules["__main__"], "__file__", None)
        if not main_file:
            raise ConfigError(f"define {cls.__qualname__} in a module file to run it: worker "
                              "processes import it by name")
        module = os.path.splitext(os.path.basename(main_file))[0]
        roots.append(os.path.dirname(os.path.abspath(main_file)))
    return f"{module}.{cls.__qualname__}", roots
