"""The Lua scripts that make each broker step one atomic round trip, read from ``lua/*.lua``.

Each script is a file in ``wkr_celery/lua/`` (package data), binding ``KEYS`` and ``ARGV`` to
named locals at its top and saying what it returns; ``tests/test_lua_scripts.py`` calls each one
directly against a real Redis.

Sharing code between scripts: Redis runs one script as one chunk, with no ``require``. A script
whose first lines say ``-- needs: lib/<name>.lua`` gets that file (relative to ``lua/``) put in
front of it, in the order named, when it is loaded here; ``lib/requeue.lua`` defines the
``requeue`` function that ``requeue_dead.lua`` and ``sweep.lua`` both call.

Inflight field ids are ``seq * 8 + source``: ``source`` 0..3 is the queue list a message came
from and 7 (:data:`SUSPECT_SOURCE`) the suspect list, so a message can be put back where it came
from without parsing it. A message an idle worker took with ``BLMOVE`` into its landing list has
the id :data:`LANDED_ID` (6: no inflight field is ever 6, ``seq`` starts at 1).
"""

from __future__ import annotations

from importlib import resources

__all__ = ["FETCH", "RETURN", "REQUEUE_DEAD", "SWEEP", "PUBLISH", "STORE", "RENEW_OWNER",
           "RELEASE_OWNER", "UNLIST", "WRITE_INFO", "SUSPECT_SOURCE", "LANDED_ID", "NUDGE", "load"]

SUSPECT_SOURCE = 7
LANDED_ID = 6
#: What ``lib/nudge.lua`` pushes onto the arrivals list to wake an idle worker; never a message.
NUDGE = b"\x00wkr-nudge"

_NEEDS = "-- needs:"


def _read(relative: str) -> str:
    return resources.files("wkr_celery").joinpath("lua", relative).read_text(encoding="utf-8")


def load(name: str) -> str:
    """The source of ``lua/<name>.lua``, with the ``lib/`` files it declares it needs in front."""
    source = _read(f"{name}.lua")
    needs: list[str] = []
    for line in source.splitlines():
        if not line.startswith(_NEEDS):
            break
        needs.extend(line[len(_NEEDS):].split())
    return "".join(_read(lib) + "\n" for lib in needs) + source


FETCH = load("fetch")
RETURN = load("return")
REQUEUE_DEAD = load("requeue_dead")
SWEEP = load("sweep")
PUBLISH = load("publish")
STORE = load("store")
RENEW_OWNER = load("renew_owner")
RELEASE_OWNER = load("release_owner")
UNLIST = load("unlist")
WRITE_INFO = load("write_info")
