"""The user's door: console scripts found on the venv's PATH, run from the folder the doc names.

A console script's ``sys.path`` starts with its own ``bin/`` folder, not the folder it is typed
in, so running it this way (and not as ``python -m`` with ``PYTHONPATH`` set) is what proves
that ``cd examples && wkr-… module.Class`` finds ``module``.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

__all__ = ["BIN", "script", "user_env"]

#: The venv's ``bin/``: where ``pip install`` put the console scripts and ``python``.
BIN = Path(sys.executable).parent


def script(name: str) -> str:
    """The absolute path of console script ``name``; fails loudly when it is not installed."""
    found = shutil.which(name, path=str(BIN))
    if found is None:
        raise AssertionError(f"console script {name!r} is not in {BIN}: pip install -e . first")
    return found


def user_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a user whose venv is active: its ``bin/`` first, no ``PYTHONPATH``."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(BIN.parent)
    return {**env, **(extra or {})}
