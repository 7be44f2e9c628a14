"""The environment of a child Python process that wkr-celery starts: one builder for all of them.

Worker processes (``wkr-serving-start``'s supervisor), the REST API and Flower beside them, and
the units of ``wkr-decentral-start`` all need the same three things from their parent:

- its environment, so that what the user exported (``CUDA_*``, proxies, ``WKR_TEST_*``) reaches
  the code that uses it;
- the user's folder first on ``PYTHONPATH``, so the child imports the worker class from where the
  user typed the command, as the parent did;
- unbuffered output, so a log router reading the child's pipe sees each line when it is written.

With ``settings``, each setting is passed as its ``WKR_*`` variable (:meth:`Settings.to_env`),
replacing the parent's, since a child reads its settings from the environment alone.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence

from .config import Settings

__all__ = ["build_child_env"]


def build_child_env(*, import_first: Sequence[str], settings: Settings | None = None,
                    extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment for a child: ``settings`` as ``WKR_*``, then ``extra``, then
    ``import_first`` ahead of the inherited ``PYTHONPATH`` and ``PYTHONUNBUFFERED=1``."""
    env = dict(os.environ)
    if settings is not None:
        env.update(settings.to_env())
    if extra:
        env.update(extra)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (*import_first, os.environ.get("PYTHONPATH", "")) if p)
    env["PYTHONUNBUFFERED"] = "1"
    return env
